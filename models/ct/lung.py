"""Lung segmentation by threshold and connected components, and lung densitometry (LAA-950,
Perc15) by ``ct-emphysema-quantification``.

``segment_lungs`` follows the classic intensity method (Hu, Hoffman and Reinhardt, IEEE TMI 2001;
the usual baseline of lung densitometry pipelines):

1. air-like voxels: HU < -320 (``AIR_HU``; lung parenchyma is about -900 to -700 HU, soft tissue
   above -100);
2. outside air: the 3-D components of air that touch the in-plane edges of the volume (air around
   the patient and under the table) are removed; what is left is air inside the body; the top and
   bottom slices do not count as edges, so lungs cut by the scan range are kept;
3. large airways: a seed in the trachea (a small air region near the left-right middle of the
   body in the most cranial slices that hold inside air), grown in 3-D through voxels of the
   Gaussian-smoothed image (sigma one voxel) below a threshold raised from -990 to -950 HU in
   10 HU steps, keeping the last step before the grown volume explodes (more than doubles by over
   5 mL, or exceeds 300 mL or a fifth of the inside air: leakage into the lung); the lumen rim
   that smoothing lifted above the threshold is added back by three geodesic dilation steps within
   the inside air, and the airway dilated by one more voxel (the wall's partial-volume rim) is
   removed;
4. lungs: the largest 3-D component (6-connected), and the second largest when it holds at
   least 20% of the largest's voxels (two separate lungs); smaller components (bowel gas,
   bronchi cut off, air in the table) are dropped;
5. left and right: two components are the two lungs; one component is split by eroding it until
   it falls apart into two large parts and giving each voxel to the nearer part; side comes from
   the patient x coordinate (LPS: +x is patient left) of each part's centroid;
6. vessels: holes are filled slice by slice in each lung separately (so the mediastinum between
   them is not filled), then the dilated airway is removed again (intrapulmonary bronchi).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from models.ct.quantify import HU, Quantity, where
from models.ct.volume import Volume

EMPHYSEMA_KB = "ct-emphysema-quantification"
AIR_HU = -320.0
LAA_HU = -950.0
AIRWAY_THRESHOLDS = tuple(range(-990, -949, 10))  # -990 .. -950 HU
AIRWAY_MAX_ML = 300.0
AIRWAY_RIM_STEPS = 3  # 3 sigma of the smoothing
SECOND_LUNG_MIN = 0.2
THIN_SLICE_MM = 1.25


@dataclass
class LungResult:
    """Masks (bool, the volume's shape) and volumes of one lung segmentation. ``left`` and
    ``right`` are None when the lungs could not be separated; ``volumes`` holds "lung" and, when
    separated, "left lung" and "right lung" Quantities (mL)."""

    lung: np.ndarray
    left: np.ndarray | None
    right: np.ndarray | None
    airway: np.ndarray
    volumes: dict[str, Quantity]
    notes: list[str] = field(default_factory=list)
    threshold: float = AIR_HU


def _patient_x(volume: Volume, mask: np.ndarray) -> float:
    """Patient x (LPS, + is left) of the centroid of ``mask``."""
    z, y, x = ndimage.center_of_mass(mask)
    sz, sy, sx = volume.spacing
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    p = np.asarray(volume.origin, dtype=np.float64) + d @ np.array([x * sx, y * sy, z * sz])
    return float(p[0])


def _cranial_last(volume: Volume) -> bool:
    """Whether the last slice is the most cranial (slice normal towards +z, the head in LPS)."""
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    return bool(d[2, 2] >= 0)


def _outside_air(air: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    edge = np.zeros_like(air)
    edge[:, 0, :] = edge[:, -1, :] = True
    edge[:, :, 0] = edge[:, :, -1] = True
    touching = np.unique(labels[edge & air])
    return np.isin(labels, touching[touching > 0])


def _trachea_seed(volume: Volume, smooth: np.ndarray, inside: np.ndarray, body: np.ndarray
                  ) -> tuple[tuple[int, int, int] | None, str]:
    """A voxel in the trachea: in the most cranial slices holding inside air, the air region
    nearest the body's left-right middle that is small (under 3% of the body's cross-section)
    and lies within the middle fifth of the body's width."""
    zs = np.flatnonzero(inside.any(axis=(1, 2)))
    if zs.size == 0:
        return None, "no air inside the body"
    order = zs[::-1] if _cranial_last(volume) else zs
    search = order[:max(3, int(np.ceil(0.3 * order.size)))]
    for z in search:
        cols = np.flatnonzero(body[z].any(axis=0))
        if cols.size == 0:
            continue
        mid, width = (cols[0] + cols[-1]) / 2.0, cols[-1] - cols[0] + 1
        labels, n = ndimage.label(inside[z])
        best = None
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            region = labels[sl] == i
            area = int(region.sum())
            if area > 0.03 * body[z].sum():
                continue
            cy, cx = ndimage.center_of_mass(region)
            cx += sl[1].start
            cy += sl[0].start
            if abs(cx - mid) > 0.1 * width:
                continue
            if best is None or abs(cx - mid) < best[0]:
                hu = np.where(region, smooth[z][sl], np.inf)
                j = np.unravel_index(int(np.argmin(hu)), hu.shape)
                best = (abs(cx - mid), (int(z), int(j[0] + sl[0].start), int(j[1] + sl[1].start)))
        if best is not None:
            return best[1], f"trachea seed at slice {best[1][0]} (row {best[1][1]}, column " \
                            f"{best[1][2]})"
    return None, "no trachea found in the cranial slices (airway not removed)"


def _grow_airway(volume: Volume, smooth: np.ndarray, inside: np.ndarray,
                 seed: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    cap = min(AIRWAY_MAX_ML, 0.2 * inside.sum() * volume.voxel_ml)
    kept, kept_t, prev_ml = None, None, 0.0
    for t in AIRWAY_THRESHOLDS:
        cand = (smooth < t) & inside
        if not cand[seed]:
            continue
        labels, _ = ndimage.label(cand)
        grown = labels == labels[seed]
        ml = grown.sum() * volume.voxel_ml
        if ml > cap or (kept is not None and ml > 2 * prev_ml and ml - prev_ml > 5.0):
            break
        kept, kept_t, prev_ml = grown, t, ml
    if kept is None:
        return np.zeros_like(inside), "the airway leaked into the lung at -990 HU: not removed"
    # the lumen rim that smoothing raised above the threshold: geodesic dilation steps
    # (18-connected) within the inside air
    kept = ndimage.binary_dilation(kept, structure=ndimage.generate_binary_structure(3, 2),
                                   iterations=AIRWAY_RIM_STEPS, mask=inside)
    return kept, (f"airway grown from the trachea below {kept_t} HU (smoothed), rim added: "
                  f"{kept.sum() * volume.voxel_ml:.1f} mL")


def _split(volume: Volume, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Two large parts of one connected lung mask (erode until it separates), or None."""
    total = mask.sum()
    eroded = mask
    for _ in range(6):
        eroded = ndimage.binary_erosion(eroded)
        labels, n = ndimage.label(eroded)
        if n < 2:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        a, b = np.argsort(sizes)[::-1][:2] + 1
        if sizes[b - 1] < 0.2 * sizes[a - 1] or sizes[a - 1] + sizes[b - 1] < 0.5 * total:
            continue
        seeds = np.where(labels == a, 1, np.where(labels == b, 2, 0))
        _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=volume.spacing,
                                                return_indices=True)
        nearest = seeds[tuple(idx)]
        return mask & (nearest == 1), mask & (nearest == 2)
    return None


def _fill(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def segment_lungs(volume: Volume, threshold: float = AIR_HU) -> LungResult:
    """The lungs of a chest CT (see the module docstring for the method)."""
    notes: list[str] = []
    air = volume.hu < threshold
    outside = _outside_air(air)
    inside = air & ~outside
    body = ~outside
    if not inside.any():
        raise ValueError(f"no air below {threshold:g} HU inside the body: no lungs to segment")
    smooth = ndimage.gaussian_filter(volume.hu.astype(np.float32), sigma=1.0)
    seed, msg = _trachea_seed(volume, smooth, inside, body)
    notes.append(msg)
    airway = np.zeros_like(inside)
    if seed is not None:
        airway, msg = _grow_airway(volume, smooth, inside, seed)
        notes.append(msg)
    airway_rim = ndimage.binary_dilation(airway) if airway.any() else airway
    cand = inside & ~airway_rim
    labels, n = ndimage.label(cand)
    if n == 0:
        raise ValueError("no air inside the body once the airway is removed")
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1] + 1
    keep = [order[0]]
    if n > 1 and sizes[order[1] - 1] >= SECOND_LUNG_MIN * sizes[order[0] - 1]:
        keep.append(order[1])
    dropped = [sizes[i - 1] * volume.voxel_ml for i in order if i not in keep]
    big = [f"{v:.1f}" for v in dropped if v >= 1.0]
    if big:
        notes.append(f"dropped air regions inside the body (mL): {', '.join(big[:8])}")
    parts = [labels == k for k in keep]
    if len(parts) == 1:
        split = _split(volume, parts[0])
        if split is None:
            notes.append("one connected lung region that erosion does not separate: no "
                         "left/right volumes")
        else:
            parts = list(split)
            notes.append("the lungs touch: split by erosion")
    parts = [_fill(p) & ~airway_rim for p in parts]
    lung = np.logical_or.reduce(parts)
    left = right = None
    if len(parts) == 2:
        a, b = parts
        if _patient_x(volume, a) < _patient_x(volume, b):
            a, b = b, a
        left, right = a & ~b, b
        lung = left | right
    volumes: dict[str, Quantity] = {}
    for name, m in (("lung", lung), ("left lung", left), ("right lung", right)):
        if m is None or not m.any():
            continue
        loc = where(volume, m, name)
        volumes[name] = Quantity(
            f"{name} volume", loc["voxels"] * volume.voxel_ml, "mL", loc,
            f"voxel count x voxel volume of the lung segmentation (air < {threshold:g} HU inside "
            "the body, airway removed, holes filled per slice)", "Hu et al., IEEE TMI 2001")
    return LungResult(lung=lung, left=left, right=right, airway=airway, volumes=volumes,
                      notes=notes, threshold=threshold)


def _densitometry_notes(volume: Volume) -> list[str]:
    notes = [f"{EMPHYSEMA_KB}: meant for full-inspiration, non-contrast, thin-slice "
             f"(<= {THIN_SLICE_MM:g} mm) CT with a smooth (soft-tissue) kernel; sharp kernels, "
             "iterative reconstruction and low-dose noise bias it (noise falsely raises LAA%), "
             "contrast raises lung density"]
    thickness = volume.slice_thickness or volume.spacing[0]
    if thickness > THIN_SLICE_MM + 1e-6:
        notes.append(f"slice thickness {thickness:g} mm is thicker than {THIN_SLICE_MM:g} mm: "
                     "partial volume averaging lowers LAA%")
    return notes


def _lung(volume: Volume, lung_mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(lung_mask)
    if mask.shape != volume.hu.shape:
        raise ValueError(f"lung mask has shape {mask.shape}, the volume {volume.hu.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("the lung mask is empty")
    return mask


def laa(volume: Volume, lung_mask: np.ndarray, threshold: float = LAA_HU) -> Quantity:
    """The low attenuation area: percentage of lung voxels with HU strictly below ``threshold``
    (LAA-950 by default, the emphysema index of ``ct-emphysema-quantification``: validated against
    pathology on thin sections (Gevenois 1996); above about 5% is widely used to define CT
    emphysema, e.g. COPDGene)."""
    mask = _lung(volume, lung_mask)
    values = volume.hu[mask]
    low = int(np.count_nonzero(values < threshold))
    loc = where(volume, mask, "lung")
    loc["below_threshold_voxels"] = low
    name = f"LAA{threshold:g}"
    notes = _densitometry_notes(volume)
    if threshold != LAA_HU:
        notes.insert(0, f"{EMPHYSEMA_KB} validates {LAA_HU:g} HU on inspiratory CT (-856 HU is "
                        "the expiratory gas-trapping threshold)")
    return Quantity(name, 100.0 * low / values.size, "%", loc,
                    f"percentage of lung voxels below {threshold:g} HU ({low} of {values.size})",
                    EMPHYSEMA_KB, notes)


def perc15(volume: Volume, lung_mask: np.ndarray) -> Quantity:
    """Perc15 (PD15): the 15th percentile of the lung HU histogram (``ct-emphysema-
    quantification``; g/L = HU + 1000, lower is more emphysema; adjust for inspiratory volume)."""
    mask = _lung(volume, lung_mask)
    value = float(np.percentile(volume.hu[mask].astype(np.float64), 15))
    notes = _densitometry_notes(volume) + [f"{value + 1000:.1f} g/L (HU + 1000)"]
    return Quantity("Perc15", value, HU, where(volume, mask, "lung"),
                    "15th percentile (linear interpolation) of the lung voxel HU", EMPHYSEMA_KB,
                    notes)
