"""H&E stain vectors (Macenko), colour deconvolution, tile quality and the tile grid.

``macenko``: Macenko et al., "A method for normalizing histology slides for quantitative
analysis", ISBI 2009. Optical density OD = -ln((I + 1) / Io) per channel; pixels with any
channel's OD below ``beta`` are transparent (glass) and dropped; the two main eigenvectors of the
OD covariance span the stain plane; each OD pixel's angle in that plane is taken and the
``alpha``-th and (100 - ``alpha``)-th percentile angles give the two stain directions; the one
with the larger red OD is haematoxylin (it absorbs red; eosin barely does). When that fails (too
few stained pixels, a degenerate plane, a negative stain) the Ruifrok-Johnston standard H&E
vectors are used and the reason is noted.

``tile_quality`` thresholds are relative to the slide's own distribution when a
``QualityReference`` (medians over the slide's tissue tiles) is given - scanners, stains and
tissues differ too much for one absolute sharpness or stain number - and fall back to absolute
values measured on CMU-1-Small-Region (see the constants) for a lone tile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from models.pathology.slide import Slide
from models.pathology.tissue import MIN_SATURATION, TissueResult, tissue_pixels

__all__ = [
    "RUIFROK_E",
    "RUIFROK_H",
    "QualityReference",
    "StainVectors",
    "TileRef",
    "assess_tiles",
    "macenko",
    "optical_density",
    "quality_reference",
    "read_tile",
    "ruifrok",
    "separate",
    "slide_stain_vectors",
    "tile_grid",
    "tile_quality",
]


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution",
# Anal Quant Cytol Histol 2001: OD of haematoxylin and eosin per RGB channel (as in
# skimage.color.hed_from_rgb), normalised.
RUIFROK_H = _unit([0.65, 0.70, 0.29])
RUIFROK_E = _unit([0.07, 0.99, 0.11])

IO = 255.0  # transmitted (glass) intensity for OD
MIN_STAIN_PIXELS = 500  # fewer non-transparent pixels than this: no reliable SVD
MIN_STAIN_ANGLE_DEG = 5.0  # H and E closer than this: the plane did not separate two stains
MAX_NEGATIVE_OD = -0.05  # a stain vector component below this is not an absorbance

# -- tile quality thresholds --------------------------------------------------------------
# A tile with less than 10 % stained pixels (saturation > tissue.MIN_SATURATION) is background.
BACKGROUND_MAX_TISSUE = 0.10
# Relative rules (with a QualityReference from the slide's own tissue tiles). Measured on the 41
# tissue tiles (224 px at 0.499 µm/px) of CMU-1-Small-Region: Laplacian variance median 1917,
# minimum 490 (0.26x the median), 5th percentile 709 (0.37x); after a Gaussian blur of sigma
# 1 px every tile is <= 382 (0.20x), sigma 1.5 px <= 110 (0.06x), sigma 2 px <= 41. So
# "blurred" is below 0.2x the slide median: any blur of sigma >= 1 px at 0.5 µm/px (~1 µm,
# clearly out of focus) is caught and no sharp tile of this slide is flagged. A tile whose mean
# H (resp. E) concentration is below a third of the slide median is "faint" (resp. "pale"): on
# CMU-1 the H means span 0.24-1.43 (median 0.54; dermis vs epidermis) and E 0.65-1.15 (median
# 0.81), so a third of the median is below every real tile.
BLUR_REL = 0.2
FAINT_REL = 1 / 3
PALE_REL = 1 / 3
# Absolute fallbacks for a lone tile (no reference), from the same measurements: between the
# sigma-1.5 px blur maximum (110) and the sharp minimum (490); H and E floors at about 60 % and
# 30 % of the slide's minima (0.24, 0.65); a tile faded to a tenth of its OD measures ~0.10 on
# both. The CMU scan is JPEG Q30 with the scanner's unsharp mask on, which raises the Laplacian;
# the relative rule is the one to trust across scanners.
BLUR_ABS = 200.0
FAINT_ABS = 0.15
PALE_ABS = 0.20
MIN_TILE_TISSUE = 0.5  # tile_grid keeps tiles at least half covered by the tissue mask
MAX_GRID_TILES = 64  # tile_grid's default cap (an even spatial sample beyond it)


@dataclass(frozen=True)
class StainVectors:
    h: np.ndarray  # unit OD vector of haematoxylin (R, G, B)
    e: np.ndarray  # unit OD vector of eosin
    max_conc: tuple[float, float] = (1.0, 1.0)  # 99th percentile H and E concentrations
    method: str = "macenko"  # or "ruifrok"
    n_pixels: int = 0  # OD pixels the estimate used
    notes: tuple[str, ...] = ()

    @property
    def matrix(self) -> np.ndarray:
        """(3, 2): columns H, E."""
        return np.stack([self.h, self.e], axis=1)

    def as_dict(self) -> dict:
        return {"h": [round(float(v), 4) for v in self.h],
                "e": [round(float(v), 4) for v in self.e],
                "max_conc": [round(float(v), 4) for v in self.max_conc],
                "method": self.method, "n_pixels": self.n_pixels, "notes": list(self.notes)}


def ruifrok(note: str | None = None) -> StainVectors:
    return StainVectors(RUIFROK_H.copy(), RUIFROK_E.copy(), method="ruifrok",
                        notes=(note,) if note else ())


def optical_density(rgb: np.ndarray, io: float = IO) -> np.ndarray:
    """-ln((I + 1) / Io) per channel, float32, same shape as ``rgb``."""
    return (-np.log((rgb.astype(np.float32) + 1.0) / io)).astype(np.float32)


def _pixels(rgb: np.ndarray, tissue_mask: np.ndarray | None) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim == 3:
        if tissue_mask is not None:
            mask = np.asarray(tissue_mask, dtype=bool)
            if mask.shape != arr.shape[:2]:
                raise ValueError(f"tissue mask {mask.shape} does not match image "
                                 f"{arr.shape[:2]}")
            return arr[mask]
        return arr.reshape(-1, arr.shape[-1])
    if arr.ndim == 2 and arr.shape[1] == 3:
        if tissue_mask is not None:
            return arr[np.asarray(tissue_mask, dtype=bool).reshape(-1)]
        return arr
    raise ValueError(f"expected (N, 3) pixels or an (H, W, 3) image, got {arr.shape}")


def macenko(rgb: np.ndarray, tissue_mask: np.ndarray | None = None, beta: float = 0.15,
            alpha: float = 1.0, io: float = IO) -> StainVectors:
    """Macenko stain vectors of ``rgb`` ((N, 3) pixels or an image, optionally masked)."""
    px = _pixels(rgb, tissue_mask)[:, :3]
    od = optical_density(px, io).astype(np.float64)
    od = od[~np.any(od < beta, axis=1)]
    n = len(od)
    if n < MIN_STAIN_PIXELS:
        return ruifrok(f"{n} non-transparent pixels (< {MIN_STAIN_PIXELS}): Ruifrok vectors")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3][:, ::-1].copy()  # largest eigenvector first
    for k in range(2):  # eigenvector signs are arbitrary: point them into positive OD
        if plane[:, k].sum() < 0:
            plane[:, k] *= -1
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_lo = plane @ np.array([math.cos(lo), math.sin(lo)])
    v_hi = plane @ np.array([math.cos(hi), math.sin(hi)])
    h, e = (v_lo, v_hi) if v_lo[0] > v_hi[0] else (v_hi, v_lo)
    h, e = _unit(h), _unit(e)
    angle = math.degrees(math.acos(float(np.clip(h @ e, -1, 1))))
    if angle < MIN_STAIN_ANGLE_DEG:
        return ruifrok(f"Macenko H and E only {angle:.1f} deg apart: Ruifrok vectors")
    if h.min() < MAX_NEGATIVE_OD or e.min() < MAX_NEGATIVE_OD:
        return ruifrok(f"Macenko vector with negative OD (H {np.round(h, 2).tolist()}, "
                       f"E {np.round(e, 2).tolist()}): Ruifrok vectors")
    conc = np.linalg.lstsq(np.stack([h, e], 1), od.T, rcond=None)[0]
    max_conc = tuple(float(v) for v in np.percentile(conc, 99, axis=1))
    return StainVectors(h, e, max_conc=max_conc, method="macenko", n_pixels=n)  # type: ignore[arg-type]


def separate(rgb: np.ndarray, vectors: StainVectors,
             io: float = IO) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration images (float32, >= 0) by least squares on the OD
    (equivalent to inverting [H, E, H x E], the residual channel dropped)."""
    od = optical_density(np.asarray(rgb)[..., :3], io)
    pinv = np.linalg.pinv(vectors.matrix).astype(np.float32)  # (2, 3)
    conc = od.reshape(-1, 3) @ pinv.T
    np.maximum(conc, 0, out=conc)
    shape = od.shape[:-1]
    return conc[:, 0].reshape(shape), conc[:, 1].reshape(shape)


# -- tile quality -------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityReference:
    """Medians over a slide's tissue tiles, against which relative thresholds are set."""

    laplacian_var: float
    h_mean: float
    e_mean: float
    n_tiles: int


def _gray(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[..., :3].astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def tile_quality(rgb_tile: np.ndarray, vectors: StainVectors,
                 reference: QualityReference | None = None) -> dict:
    """Stain amounts, tissue fraction, sharpness and flags of one RGB tile.

    Keys: ``h_mean``, ``e_mean`` (mean concentrations over tissue pixels), ``tissue_fraction``,
    ``laplacian_var`` (variance of the Laplacian of the grey image, over tissue pixels when the
    tile has at least 5 % of them, else over the tile), ``flags`` (sorted list out of
    "background", "blurred", "faint", "pale"), ``thresholds`` (the ones applied).
    """
    tissue = tissue_pixels(rgb_tile, MIN_SATURATION)
    frac = float(tissue.mean())
    h, e = separate(rgb_tile, vectors)
    if tissue.any():
        h_mean, e_mean = float(h[tissue].mean()), float(e[tissue].mean())
    else:
        h_mean = e_mean = 0.0
    lap = ndi.laplace(_gray(rgb_tile))
    sel = lap[tissue] if frac >= 0.05 else lap
    lap_var = float(sel.var())
    q = {"h_mean": h_mean, "e_mean": e_mean, "tissue_fraction": frac, "laplacian_var": lap_var}
    return _flag(q, reference)


def _flag(q: dict, reference: QualityReference | None) -> dict:
    """``q`` with ``flags`` and ``thresholds`` set for ``reference`` (absolute when None)."""
    if reference is not None:
        thr = {"blur": BLUR_REL * reference.laplacian_var, "faint": FAINT_REL * reference.h_mean,
               "pale": PALE_REL * reference.e_mean, "relative": True}
    else:
        thr = {"blur": BLUR_ABS, "faint": FAINT_ABS, "pale": PALE_ABS, "relative": False}
    thr["background"] = BACKGROUND_MAX_TISSUE
    flags = []
    if q["tissue_fraction"] < BACKGROUND_MAX_TISSUE:
        flags.append("background")
    else:
        if q["laplacian_var"] < thr["blur"]:
            flags.append("blurred")
        if q["h_mean"] < thr["faint"]:
            flags.append("faint")
        if q["e_mean"] < thr["pale"]:
            flags.append("pale")
    return {**q, "flags": sorted(flags), "thresholds": thr}


def quality_reference(qualities: Iterable[dict]) -> QualityReference | None:
    """Medians of the non-background tiles' measures (None when there are none)."""
    rows = [q for q in qualities if q["tissue_fraction"] >= BACKGROUND_MAX_TISSUE]
    if not rows:
        return None
    return QualityReference(
        laplacian_var=float(np.median([q["laplacian_var"] for q in rows])),
        h_mean=float(np.median([q["h_mean"] for q in rows])),
        e_mean=float(np.median([q["e_mean"] for q in rows])),
        n_tiles=len(rows))


def assess_tiles(tiles: Sequence[np.ndarray], vectors: StainVectors) -> tuple[
        list[dict], QualityReference | None]:
    """``tile_quality`` of every tile with thresholds relative to these tiles' own medians
    (the whole slide's tissue tiles, normally)."""
    first = [tile_quality(t, vectors) for t in tiles]
    ref = quality_reference(first)
    if ref is None:
        return first, None
    return [_flag(q, ref) for q in first], ref


# -- tile grid ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TileRef:
    level: int
    x: int  # region in that level's pixels
    y: int
    w: int
    h: int
    size: int  # output side in pixels at ``mpp``
    factor: float  # level pixels per output pixel (1.0: read as is, > 1: downsampled)
    mpp: float | None  # µm per output pixel
    tissue_fraction: float  # from the tissue mask
    base_box: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # x, y, w, h at base


def tile_grid(slide: Slide, tissue: TissueResult, target_mpp: float = 0.5, size: int = 224,
              min_tissue: float = MIN_TILE_TISSUE, max_tiles: int | None = MAX_GRID_TILES,
              ) -> list[TileRef]:
    """Non-overlapping ``size`` px tiles at ``target_mpp``, read from the coarsest level at
    least that fine (``Slide.best_level_for_mpp``) and resampled by ``factor``; only tiles whose
    tissue-mask fraction is at least ``min_tissue``; beyond ``max_tiles`` an even spatial sample
    (farthest-point sampling of tile centres, returned in raster order)."""
    if slide.mpp is None:  # no calibration: base-level pixels as they are
        level, factor, out_mpp = 0, 1.0, None
    else:
        level = slide.best_level_for_mpp(target_mpp)
        lv = slide.levels[level]
        lv_mpp = (lv.mpp[0] + lv.mpp[1]) / 2  # type: ignore[index]
        factor = max(1.0, target_mpp / lv_mpp)
        if abs(factor - 1.0) <= 0.02:  # within 2 %: read pixels as they are
            factor = 1.0
        out_mpp = lv_mpp * factor
    lv = slide.levels[level]
    read = max(1, round(size * factor))
    sx, sy = slide.dimensions[0] / lv.width, slide.dimensions[1] / lv.height
    refs = []
    for x, y, w, h in slide.tiles(level, read):
        if w < read or h < read:
            continue  # partial edge tiles are left out
        bx, by, bw, bh = x * sx, y * sy, w * sx, h * sy
        frac = tissue.fraction_in(bx, by, bx + bw, by + bh)
        if frac >= min_tissue:
            refs.append(TileRef(level, x, y, w, h, size, factor, out_mpp, frac,
                                (round(bx), round(by), round(bw), round(bh))))
    if max_tiles is not None and len(refs) > max_tiles:
        refs = _spread(refs, max_tiles)
    return refs


def _spread(refs: list[TileRef], k: int) -> list[TileRef]:
    """``k`` of ``refs`` spread evenly over the tissue: farthest-point sampling from the tile
    nearest the centroid, then raster order."""
    centres = np.array([[r.x + r.w / 2, r.y + r.h / 2] for r in refs], dtype=np.float64)
    start = int(np.argmin(((centres - centres.mean(0)) ** 2).sum(1)))
    chosen = [start]
    dist = ((centres - centres[start]) ** 2).sum(1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((centres - centres[nxt]) ** 2).sum(1))
    return [refs[i] for i in sorted(chosen, key=lambda i: (refs[i].y, refs[i].x))]


def read_tile(slide: Slide, ref: TileRef) -> np.ndarray:
    """The tile as uint8 RGB (size, size, 3) at its ``mpp``."""
    arr = slide.read_region(ref.level, ref.x, ref.y, ref.w, ref.h)
    if arr.shape[0] != ref.size or arr.shape[1] != ref.size:
        arr = np.asarray(Image.fromarray(arr).resize((ref.size, ref.size),
                                                     Image.Resampling.LANCZOS))
    return arr


def slide_stain_vectors(slide: Slide, tissue: TissueResult, target_mpp: float = 1.0,
                        size: int = 256, max_tiles: int = 16, **kw) -> StainVectors:
    """Macenko vectors from up to ``max_tiles`` tissue tiles spread over the slide (at a
    resolution where nuclei are resolved: a thumbnail mixes H and E in each pixel)."""
    refs = tile_grid(slide, tissue, target_mpp=target_mpp, size=size, max_tiles=max_tiles)
    if not refs:
        refs = tile_grid(slide, tissue, target_mpp=target_mpp, size=size, min_tissue=0.1,
                         max_tiles=max_tiles)
    if not refs:
        return ruifrok("no tissue tiles: Ruifrok vectors")
    px = np.concatenate([read_tile(slide, r).reshape(-1, 3) for r in refs])
    return macenko(px, **kw)
