"""Tissue detection at low magnification.

Method: a thumbnail at about ``target_mpp`` (8 µm per pixel by default), its HSV saturation,
3x3 median filtered, thresholded by Otsu (never below ``MIN_SATURATION``), then small-object
removal and hole filling, both with a size limit in µm² (``MIN_OBJECT_UM2``).

Why saturation and not optical density: the glass of a bright-field slide is near-neutral grey
whatever its brightness (on CMU-1-Small-Region the background saturation is ~0.01 against
~0.3-0.55 in tissue), so saturation separates stained tissue from glass even under uneven
illumination, vignetting or a dim scan, where an OD threshold also picks up grey background,
shadows at the slide edge, dust, folds and black pen. Its weaknesses, accepted here: very pale or
unstained tissue (fat) has low saturation and is missed, and coloured ink counts as tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from models.pathology.slide import Slide

__all__ = ["TissueResult", "detect_tissue", "tissue_pixels"]

DEFAULT_TARGET_MPP = 8.0  # µm per thumbnail pixel: a 224-px tile at 0.5 µm/px is 14 px here
DEFAULT_MAX_SIDE = 1024  # thumbnail size when the slide has no mpp
MIN_SIDE, MAX_SIDE = 64, 4096  # bounds on the thumbnail's longer side
# Otsu on a slide that is almost all glass can split noise; glass measured ~0.01-0.02, the
# palest eosin on the CMU slide ~0.1, so 0.05 sits between the two.
MIN_SATURATION = 0.05
# Pieces and holes below 0.01 mm² (a 100 µm square, under one 224-px tile at 0.5 µm/px) are
# debris / dust specks, or gaps between cells, not tissue or real lumina.
MIN_OBJECT_UM2 = 10_000.0
MIN_OBJECT_FRACTION = 1e-4  # the same limit as a fraction of the thumbnail without mpp


@dataclass
class TissueResult:
    mask: np.ndarray  # bool (h, w) at thumbnail scale
    thumbnail: np.ndarray  # uint8 RGB the mask was computed from
    scale: float  # thumbnail pixels per base-level pixel
    thumb_mpp: tuple[float, float] | None  # µm per thumbnail pixel (x, y)
    area_mm2: float | None  # tissue area; None without mpp
    fraction: float  # tissue fraction of the slide area
    threshold: float  # saturation threshold used
    base_dims: tuple[int, int] = (0, 0)  # base-level (width, height) the mask covers
    method: str = "otsu-saturation"
    notes: list[str] = field(default_factory=list)
    _integral: np.ndarray | None = field(default=None, repr=False)

    @property
    def base_size(self) -> tuple[float, float]:
        if self.base_dims[0] > 0:
            return float(self.base_dims[0]), float(self.base_dims[1])
        h, w = self.mask.shape
        return w / self.scale, h / self.scale

    def fraction_in(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Tissue fraction of the base-level box [x0, x1) x [y0, y1), from the mask (each mask
        pixel touched counts whole, so small boxes are approximate)."""
        if self._integral is None:
            ii = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.int64)
            ii[1:, 1:] = self.mask.cumsum(0).cumsum(1)
            self._integral = ii
        h, w = self.mask.shape
        bw, bh = self.base_size
        mx0 = min(w - 1, max(0, math.floor(x0 * w / bw)))
        my0 = min(h - 1, max(0, math.floor(y0 * h / bh)))
        mx1 = min(w, max(mx0 + 1, math.ceil(x1 * w / bw)))
        my1 = min(h, max(my0 + 1, math.ceil(y1 * h / bh)))
        ii = self._integral
        total = ii[my1, mx1] - ii[my0, mx1] - ii[my1, mx0] + ii[my0, mx0]
        return float(total) / ((mx1 - mx0) * (my1 - my0))


def tissue_pixels(rgb: np.ndarray, threshold: float = MIN_SATURATION) -> np.ndarray:
    """Pixel-level tissue mask by saturation (for tiles at full resolution)."""
    return rgb2hsv(rgb)[..., 1] > threshold


def detect_tissue(slide: Slide, target_mpp: float = DEFAULT_TARGET_MPP,
                  max_side: int | None = None) -> TissueResult:
    """Tissue mask of ``slide`` at about ``target_mpp`` µm per pixel (or at ``max_side``
    pixels on the longer side when given, or when the slide has no mpp)."""
    notes: list[str] = []
    bw, bh = slide.dimensions
    base_mpp = slide.mpp
    if max_side is None:
        if base_mpp is None:
            max_side = DEFAULT_MAX_SIDE
            notes.append(f"slide has no mpp: thumbnail of {max_side} px, area not computed, "
                         "size limits relative to the thumbnail")
        else:
            mean_mpp = (base_mpp[0] + base_mpp[1]) / 2
            max_side = round(max(bw, bh) * mean_mpp / target_mpp)
    max_side = int(min(MAX_SIDE, max(MIN_SIDE, max_side)))
    thumb, scale = slide.thumbnail(max_side)
    th, tw = thumb.shape[:2]
    thumb_mpp = (base_mpp[0] * bw / tw, base_mpp[1] * bh / th) if base_mpp else None

    sat = ndi.median_filter(rgb2hsv(thumb)[..., 1].astype(np.float32), size=3)
    try:
        otsu = float(threshold_otsu(sat))
    except ValueError:  # a constant image
        otsu = MIN_SATURATION
    if otsu < MIN_SATURATION:
        notes.append(f"Otsu threshold {otsu:.3f} below the floor {MIN_SATURATION}: "
                     "little or no stained tissue")
    thr = max(otsu, MIN_SATURATION)
    mask = sat > thr

    if thumb_mpp is not None:
        min_px = MIN_OBJECT_UM2 / (thumb_mpp[0] * thumb_mpp[1])
    else:
        min_px = MIN_OBJECT_FRACTION * th * tw
    min_px = max(1, int(min_px))
    mask = remove_small_objects(mask, max_size=min_px)
    mask = remove_small_holes(mask, max_size=min_px)

    fraction = float(mask.mean())
    area = (float(mask.sum()) * thumb_mpp[0] * thumb_mpp[1] / 1e6) if thumb_mpp else None
    return TissueResult(mask=mask, thumbnail=thumb, scale=scale, thumb_mpp=thumb_mpp,
                        area_mm2=area, fraction=fraction, threshold=thr, base_dims=(bw, bh),
                        notes=notes)
