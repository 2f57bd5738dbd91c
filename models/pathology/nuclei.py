"""Classical nucleus detection on H&E tiles.

Per tile: the haematoxylin concentration (``stain.separate``), Gaussian smoothing (sigma
0.5 µm), a white top-hat (H minus its grey opening by a square of half-side 8 µm, so nuclei in
haematoxylin-rich epidermis stand out as they do in pink stroma), a global Otsu threshold on the
top-hat never below ``MIN_CONTRAST`` and only where H itself exceeds ``MIN_H`` (an empty tile
must not split its noise), opening and hole filling; touching nuclei are split by a marker
watershed on the distance transform (markers: ``peak_local_max`` of the distance map smoothed
by 0.5 px, at least ``MIN_PEAK_UM`` apart and ``MIN_PEAK_DEPTH_UM`` deep; a component
with no peak gets its deepest pixel). Jagged objects (solidity of the outline < 0.8: keratin or
stroma fragments) are dropped. Objects are kept when their area is 10-400 µm²:
lymphocyte nuclei (~7 µm across) are ~40 µm², most epithelial / stromal nuclei 30-150 µm², large
tumour nuclei up to ~300 µm²; under 10 µm² (a 3.5 µm disc) is debris or an apoptotic fragment,
over 400 µm² a clump the watershed did not split or a dark non-nuclear blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import find_contours, regionprops
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import watershed

from models.pathology.slide import Slide
from models.pathology.stain import StainVectors, TileRef, read_tile, separate
from models.pathology.tissue import TissueResult, tissue_pixels

__all__ = ["Nucleus", "count_nuclei", "detect_nuclei"]

MIN_AREA_UM2 = 10.0
MAX_AREA_UM2 = 400.0
# Otsu floor in concentration units (ln-OD along the unit H vector). On CMU-1 the tiles' Otsu
# values are 0.55-1.4 and haematoxylin-free stroma / glass sit below 0.3.
MIN_H = 0.5
BACKGROUND_RADIUS_UM = 8.0  # top-hat disc radius: wider than the largest nucleus kept
MIN_CONTRAST = 0.25  # top-hat floor (H above local background)
MIN_SOLIDITY = 0.8  # nuclei are convex; jagged fragments of dark keratin or stroma are not
SMOOTH_UM = 0.5  # Gaussian sigma of the H image
MIN_PEAK_UM = 2.5  # markers closer than this (about the smallest nucleus' radius) merge
MIN_PEAK_DEPTH_UM = 0.5  # a marker must lie at least this far inside the mask
MAX_CONTOUR_POINTS = 16


@dataclass(frozen=True)
class Nucleus:
    x: float  # centroid, tile pixels (column)
    y: float  # centroid, tile pixels (row)
    area_um2: float
    contour: tuple[tuple[float, float], ...]  # closed polygon (x, y), first point not repeated


def _outline(region_image: np.ndarray) -> np.ndarray | None:
    """The region's outer iso-0.5 contour as (row, col) points in the region's box."""
    contours = find_contours(np.pad(region_image, 1).astype(np.float32), 0.5)
    if not contours:
        return None
    return max(contours, key=len) - 1.0


def _polygon_area(pts: np.ndarray) -> float:
    r, c = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(c, np.roll(r, 1)) - np.dot(r, np.roll(c, 1))))


def _solidity(outline: np.ndarray) -> float:
    """Area of the outline polygon over the area of its convex hull (1 for a convex shape)."""
    try:
        hull = ConvexHull(outline).volume  # the area, in 2-D
    except (QhullError, ValueError):
        return 1.0  # degenerate (a line of pixels): let the area filter decide
    return _polygon_area(outline) / hull if hull > 0 else 1.0


def _simplify(outline: np.ndarray, top: int, left: int) -> tuple[tuple[float, float], ...]:
    pts = outline[:-1] if len(outline) > 1 and np.allclose(outline[0], outline[-1]) else outline
    if len(pts) > MAX_CONTOUR_POINTS:  # even subsample along the outline
        pts = pts[np.linspace(0, len(pts), MAX_CONTOUR_POINTS, endpoint=False).astype(int)]
    return tuple((round(float(c + left), 2), round(float(r + top), 2)) for r, c in pts)


def detect_nuclei(rgb_tile: np.ndarray, vectors: StainVectors, mpp: float,
                  min_area_um2: float = MIN_AREA_UM2,
                  max_area_um2: float = MAX_AREA_UM2) -> list[Nucleus]:
    """Nuclei of one RGB tile taken at ``mpp`` µm per pixel."""
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    px_area = mpp * mpp
    h, _ = separate(rgb_tile, vectors)
    h = ndi.gaussian_filter(h, SMOOTH_UM / mpp)
    # white top-hat: H above its local background (the opening by a disc wider than any
    # nucleus), so nuclei in haematoxylin-rich cytoplasm stand out as they do in stroma
    r_bg = max(2, round(BACKGROUND_RADIUS_UM / mpp))
    background = ndi.grey_opening(h, size=(2 * r_bg + 1, 2 * r_bg + 1))  # square: separable
    top = h - background
    try:
        thr = float(threshold_otsu(top))
    except ValueError:
        return []
    thr = max(thr, MIN_CONTRAST)
    mask = (top > thr) & (h > MIN_H)
    if not mask.any():
        return []
    mask = ndi.binary_opening(mask, structure=disk(1))
    mask = ndi.binary_fill_holes(mask)
    min_px = max(1, int(min_area_um2 / px_area))
    mask = remove_small_objects(mask, max_size=min_px - 1) if min_px > 1 else mask
    if not mask.any():
        return []

    dist = ndi.distance_transform_edt(mask)
    dist_s = ndi.gaussian_filter(dist, 0.5)
    comps, n_comp = ndi.label(mask)
    peaks = peak_local_max(dist_s, min_distance=max(1, round(MIN_PEAK_UM / mpp)),
                           threshold_abs=MIN_PEAK_DEPTH_UM / mpp, labels=comps,
                           exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    for i, (r, c) in enumerate(peaks, start=1):
        markers[r, c] = i
    # a component without a peak (small, thin) still gets one marker: its deepest pixel
    have = set(np.unique(comps[markers > 0]).tolist())
    nxt = len(peaks) + 1
    for lab, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is not None and lab not in have:
            sub = np.where(comps[sl] == lab, dist[sl], -1)
            r, c = np.unravel_index(int(np.argmax(sub)), sub.shape)
            markers[sl][r, c] = nxt
            nxt += 1
    labels = watershed(-dist_s, markers, mask=mask)

    out = []
    for reg in regionprops(labels):
        area = reg.area * px_area
        if not min_area_um2 <= area <= max_area_um2:
            continue
        outline = _outline(reg.image)
        if outline is None or _solidity(outline) < MIN_SOLIDITY:
            continue
        r, c = reg.centroid
        out.append(Nucleus(x=float(c), y=float(r), area_um2=float(area),
                           contour=_simplify(outline, reg.bbox[0], reg.bbox[1])))
    return out


def count_nuclei(slide: Slide, tissue: TissueResult, vectors: StainVectors,
                 tiles: Sequence[TileRef]) -> dict:
    """Nuclei over ``tiles`` (from ``stain.tile_grid``) and their density per mm² of the
    tissue analysed (each tile's stained-pixel fraction times its area). ``tissue`` is the
    slide's mask, reported alongside for the total-tissue context. ``points`` are the centroids
    in base-level pixels (x, y) and ``areas_um2`` their areas, in the same order."""
    mpp_known = all(t.mpp is not None for t in tiles)
    total = 0
    tissue_um2 = 0.0
    per_tile = []
    areas: list[float] = []
    points: list[tuple[float, float]] = []
    for ref in tiles:
        rgb = read_tile(slide, ref)
        mpp = ref.mpp if ref.mpp is not None else 1.0
        nuclei = detect_nuclei(rgb, vectors, mpp)
        total += len(nuclei)
        per_tile.append(len(nuclei))
        areas.extend(n.area_um2 for n in nuclei)
        # centroids in pixels of the base level (what an annotation of the slide refers to)
        bx, by, bw, bh = ref.base_box
        points.extend((bx + n.x * bw / ref.size, by + n.y * bh / ref.size) for n in nuclei)
        tissue_um2 += float(tissue_pixels(rgb).mean()) * (ref.size * mpp) ** 2
    area_mm2 = tissue_um2 / 1e6 if mpp_known else None
    return {
        "count": total,
        "tiles_used": len(tiles),
        "per_tile": per_tile,
        "tissue_area_analysed_mm2": area_mm2,
        "density_per_mm2": (total / area_mm2) if area_mm2 else None,
        "mean_area_um2": float(np.mean(areas)) if areas else None,
        "slide_tissue_area_mm2": tissue.area_mm2,
        "notes": [] if mpp_known else ["no mpp: areas taken as 1 µm per pixel; density None"],
        "points": points,
        "areas_um2": areas,
    }
