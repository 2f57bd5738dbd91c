"""CT quantification on a ``Volume``: region statistics, liver-spleen attenuation (hepatic
steatosis), vertebral trabecular attenuation (low bone attenuation) and the contrast phase.

Every number is a ``Quantity`` that says where it was measured: the slice range (0-based indices
into ``Volume.hu``) with the SOP Instance UIDs (and, for an Enhanced CT, frame numbers) of its first
and last slices, the region's name and its voxel count, a one-line method and a source (the
knowledge entry, ``knowledge_base/ct/<id>.md``, whose criteria it applies).

Thresholds are the knowledge entries' own and are quoted where they are used:

- ``ct-hepatic-steatosis``: on unenhanced CT, liver attenuation < 40 HU indicates moderate to
  severe steatosis; liver lower than spleen (liver-minus-spleen < 0 HU, stricter cut-off < -10 HU;
  or liver-to-spleen ratio < 1.0) indicates steatosis; normal liver about 55-65 HU; > 75 HU
  (amiodarone, iron) masks steatosis; contrast-enhanced CT is less reliable.
- ``ct-low-bone-attenuation``: L1 trabecular attenuation <= 160 HU about 90% sensitive for
  osteoporosis, <= 110 HU more than 90% specific, about 135 HU balanced, <= 100 HU highly
  suggestive (Pickhardt 2013); contrast raises it by about 10-20 HU in portal venous phase.
- ``ct-contrast-phases``: the timing windows after injection (early arterial 15-25 s, late arterial
  35-45 s, portal venous 60-80 s, nephrographic 90-120 s, delayed 3-15 min), enhancement is an
  increase >= 20 HU, aortic bolus-tracking triggers are about 100-150 HU. The entry gives no
  vessel-attenuation cut-offs per phase; those used here are MedGate's own (``PHASE_RULES``) and
  say so in their evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from scipy import ndimage

from models.ct.volume import Volume

HU = "[hnsf'U]"  # UCUM Hounsfield unit
PHASES = ("unenhanced", "arterial", "portal_venous", "delayed", "unknown")

STEATOSIS_KB = "ct-hepatic-steatosis"
BONE_KB = "ct-low-bone-attenuation"
PHASE_KB = "ct-contrast-phases"
HU_KB = "ct-hounsfield-units-windowing"
SPACING_KB = "ct-voxel-spacing-consistency"

# ct-hepatic-steatosis, "Criteria" (unenhanced CT).
LIVER_LOW_HU = 40.0  # liver < 40 HU: moderate to severe steatosis (>= ~30% fat fraction)
LS_DIFFERENCE_HU = 0.0  # liver - spleen < 0 HU: liver lower than spleen indicates steatosis
LS_DIFFERENCE_STRICT_HU = -10.0  # "a commonly used stricter cut-off"
LS_RATIO = 1.0  # liver / spleen < 1.0 indicates steatosis
LIVER_NORMAL_HU = (55.0, 65.0)  # normal liver about 55-65 HU
LIVER_HIGH_HU = 75.0  # amiodarone / iron overload (> 75 HU) mask steatosis

# ct-low-bone-attenuation, "Criteria" (Pickhardt 2013, L1 trabecular HU).
BONE_HIGHLY_SUGGESTIVE_HU = 100.0  # <= 100 HU highly suggestive of osteoporosis
BONE_SPECIFIC_HU = 110.0  # <= 110 HU more than 90% specific
BONE_BALANCED_HU = 135.0  # about 135 HU balanced
BONE_SENSITIVE_HU = 160.0  # <= 160 HU about 90% sensitive
BONE_LEVELS = ("L1", "T12", "L2")  # L1; T12 or L2 when L1 is fractured or abnormal
BONE_ERODE_MM = 3.0  # cortex exclusion (see bone_attenuation)

# Contrast phase from vessel attenuation. The knowledge entries give: unclotted blood about
# 30-45 HU (ct-hounsfield-units-windowing), enhancement is an increase >= 20 HU and aortic
# bolus-tracking triggers about 100-150 HU (ct-contrast-phases). The cut-offs between enhanced
# phases are not in the knowledge base: they are MedGate's working values, named as such.
BLOOD_UNENHANCED_MAX_HU = 45.0
ENHANCEMENT_HU = 20.0
PHASE_RULES = {
    # aorta below unenhanced blood (<= 45 HU) plus the 20 HU enhancement criterion
    "unenhanced_aorta_max": BLOOD_UNENHANCED_MAX_HU + ENHANCEMENT_HU,
    # MedGate's own: an arterial phase has the aorta past the top of the 100-150 HU trigger
    # range and the portal vein well behind it
    "arterial_aorta_min": 150.0,
    "arterial_aorta_minus_portal_min": 50.0,
    # MedGate's own: a delayed (equilibrium) phase has aorta and portal vein enhanced, equal
    # within 20 HU, with the aorta below the 150 HU of a first-pass study
    "delayed_aorta_max": 150.0,
    "delayed_difference_max": 20.0,
    # MedGate's own: a portal vein enhanced past the 100 HU trigger level
    "portal_enhanced_min": 100.0,
}
# ct-contrast-phases timing windows (seconds after the start of injection) -> phase.
TIMING_WINDOWS = (
    (0.0, 50.0, "arterial", "early arterial 15-25 s / late arterial 35-45 s"),
    (50.0, 90.0, "portal_venous", "portal venous 60-80 s"),
    (90.0, 180.0, "unknown", "nephrographic 90-120 s (neither portal venous nor delayed)"),
    (180.0, 3600.0, "delayed", "delayed/excretory 3-15 min"),
)


@dataclass
class Quantity:
    """One measured number: ``value`` in UCUM ``unit``; ``where`` it was measured (``region``,
    ``slices`` (first, last) 0-based, ``first_uid``/``last_uid`` SOP Instance UIDs, ``frames``
    for an Enhanced CT, ``voxels``, ``series_uid``); ``method`` one line; ``source`` the
    knowledge entry id or reference of the method; ``notes`` caveats of this measurement."""

    name: str
    value: float
    unit: str
    where: dict[str, Any]
    method: str
    source: str
    notes: list[str] = field(default_factory=list)


def where(volume: Volume, mask: np.ndarray, region: str) -> dict[str, Any]:
    """The location record of a measurement over ``mask`` (see ``Quantity``)."""
    mask = _check_mask(volume, mask, region)
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    first, last = int(slices[0]), int(slices[-1])
    out: dict[str, Any] = {
        "region": region,
        "slices": (first, last),
        "first_uid": volume.slice_uids[first] if len(volume.slice_uids) > first else None,
        "last_uid": volume.slice_uids[last] if len(volume.slice_uids) > last else None,
        "voxels": int(np.count_nonzero(mask)),
        "series_uid": volume.series_uid,
    }
    if volume.frames:
        out["frames"] = (int(volume.frames[first]), int(volume.frames[last]))
    return out


def _check_mask(volume: Volume, mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != volume.hu.shape:
        raise ValueError(f"mask {name!r} has shape {mask.shape}, the volume {volume.hu.shape}")
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.bool_)):
            raise ValueError(f"mask {name!r} must be boolean (or 0/1 integers), not {mask.dtype}"
                             " (threshold a fractional mask first)")
        mask = mask != 0
    if not mask.any():
        raise ValueError(f"mask {name!r} is empty")
    return mask


def mask_stats(volume: Volume, mask: np.ndarray, name: str) -> list[Quantity]:
    """Volume (voxel count x voxel volume, mL) and HU statistics of a region: mean, SD (sample,
    ddof=1), median, 5th/25th/75th/95th percentiles (linear interpolation), min and max. Names
    are ``f"{name} {stat}"`` with stat in volume, mean, sd, median, p05, p25, p75, p95, min, max.
    Refuses an empty mask or one of the wrong shape (ValueError)."""
    mask = _check_mask(volume, mask, name)
    loc = where(volume, mask, name)
    values = volume.hu[mask].astype(np.float64)
    n = values.size
    spacing = "x".join(f"{s:g}" for s in volume.spacing)
    out = [Quantity(f"{name} volume", n * volume.voxel_ml, "mL", dict(loc),
                    f"voxel count {n} x voxel volume {volume.voxel_ml:.6g} mL ({spacing} mm, slice "
                    "spacing from slice positions)", SPACING_KB)]
    p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    stats = (("mean", values.mean(), "mean HU over the mask voxels"),
             ("sd", values.std(ddof=1) if n > 1 else 0.0, "sample standard deviation (ddof=1)"),
             ("median", p50, "median HU"),
             ("p05", p5, "5th percentile HU (linear interpolation)"),
             ("p25", p25, "25th percentile HU (linear interpolation)"),
             ("p75", p75, "75th percentile HU (linear interpolation)"),
             ("p95", p95, "95th percentile HU (linear interpolation)"),
             ("min", values.min(), "minimum HU"),
             ("max", values.max(), "maximum HU"))
    for stat, value, method in stats:
        out.append(Quantity(f"{name} {stat}", float(value), HU, dict(loc),
                            f"{method} over {n} voxels (HU from Rescale Slope/Intercept)", HU_KB))
    return out


def by_name(quantities: list[Quantity]) -> dict[str, Quantity]:
    """Quantities keyed by name."""
    return {q.name: q for q in quantities}


def _mean(volume: Volume, mask: np.ndarray, name: str, source: str, method: str) -> Quantity:
    mask = _check_mask(volume, mask, name)
    loc = where(volume, mask, name)
    value = float(volume.hu[mask].astype(np.float64).mean())
    return Quantity(f"{name} mean attenuation", value, HU, loc,
                    f"{method} ({loc['voxels']} voxels)", source)


def _phase_name(phase: str | Mapping[str, Any] | None) -> str:
    if phase is None:
        return "unknown"
    name = phase.get("phase", "unknown") if isinstance(phase, Mapping) else str(phase)
    if name not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {name!r}")
    return name


def liver_spleen(volume: Volume, liver_mask: np.ndarray, spleen_mask: np.ndarray | None = None,
                 *, phase: str | Mapping[str, Any] | None = None
                 ) -> tuple[list[Quantity], dict[str, Any]]:
    """Liver and spleen mean attenuation, liver-minus-spleen difference and liver/spleen ratio,
    and the hepatic steatosis state by ``ct-hepatic-steatosis``.

    ``phase`` is a phase name or the dict of ``contrast_phase``. The criteria are for unenhanced
    CT only: any other phase, or an unknown one, gives "indeterminate". On unenhanced CT:
    "present" when the liver is < 40 HU or (with a spleen) liver - spleen < 0 HU (ratio < 1.0);
    "absent" when the liver is >= 40 HU and not below the spleen; without a spleen a liver of
    40-55 HU (below the normal 55-65 HU) is "indeterminate"; a liver > 75 HU is "indeterminate"
    (amiodarone or iron overload mask steatosis). The means are over the whole masks.

    Returns (quantities, classification) with classification {"finding", "state",
    "criteria", "knowledge", "phase", "met", "notes"}."""
    method = "mean HU over the segmented region"
    liver = _mean(volume, liver_mask, "liver", STEATOSIS_KB, method)
    quantities = [liver]
    spleen = diff = None
    if spleen_mask is not None:
        spleen = _mean(volume, spleen_mask, "spleen", STEATOSIS_KB, method)
        both = {"region": "liver, spleen", "liver": liver.where, "spleen": spleen.where}
        diff = Quantity("liver-spleen attenuation difference", liver.value - spleen.value, HU,
                        both, "liver mean HU minus spleen mean HU", STEATOSIS_KB)
        quantities += [spleen, diff]
        if spleen.value > 0:
            quantities.append(Quantity("liver/spleen attenuation ratio",
                                       liver.value / spleen.value, "{ratio}", dict(both),
                                       "liver mean HU divided by spleen mean HU", STEATOSIS_KB))
    phase_name = _phase_name(phase)
    criteria = (f"{STEATOSIS_KB} (unenhanced CT only): liver < {LIVER_LOW_HU:g} HU indicates "
                "moderate to severe steatosis; liver lower than spleen (liver - spleen < "
                f"{LS_DIFFERENCE_HU:g} HU, stricter cut-off < {LS_DIFFERENCE_STRICT_HU:g} HU; "
                f"ratio < {LS_RATIO:g}) indicates steatosis; normal liver about "
                f"{LIVER_NORMAL_HU[0]:g}-{LIVER_NORMAL_HU[1]:g} HU")
    result: dict[str, Any] = {"finding": "hepatic steatosis", "state": "indeterminate",
                              "criteria": criteria,
                              "knowledge": STEATOSIS_KB, "phase": phase_name, "met": [],
                              "notes": []}
    notes, met = result["notes"], result["met"]
    if diff is not None:
        if diff.value < LS_DIFFERENCE_STRICT_HU:
            met.append(f"liver - spleen {diff.value:.1f} HU < {LS_DIFFERENCE_STRICT_HU:g} HU "
                       "(stricter cut-off)")
        elif diff.value < LS_DIFFERENCE_HU:
            met.append(f"liver - spleen {diff.value:.1f} HU < {LS_DIFFERENCE_HU:g} HU")
    if liver.value < LIVER_LOW_HU:
        met.insert(0, f"liver {liver.value:.1f} HU < {LIVER_LOW_HU:g} HU")
    if phase_name != "unenhanced":
        notes.append(f"phase {phase_name}: the CT criteria apply to unenhanced CT; "
                     "contrast-enhanced attenuation depends on timing and dose")
        if phase_name == "portal_venous" and diff is not None and diff.value < 0:
            notes.append("portal venous liver attenuation below the spleen suggests steatosis "
                         "but should be confirmed (unenhanced CT or MRI PDFF)")
        return quantities, result
    if liver.value > LIVER_HIGH_HU:
        notes.append(f"liver {liver.value:.1f} HU > {LIVER_HIGH_HU:g} HU: increased attenuation "
                     "(amiodarone, iron overload) masks steatosis")
        return quantities, result
    if met:
        result["state"] = "present"
        if liver.value >= LIVER_LOW_HU:
            notes.append(f"liver >= {LIVER_LOW_HU:g} HU: steatosis by the liver-spleen comparison; "
                         "the criterion for moderate to severe steatosis is not met")
    elif diff is not None or liver.value >= LIVER_NORMAL_HU[0]:
        result["state"] = "absent"
        notes.append("mild steatosis (< about 30% fat) is poorly detected by CT")
    else:
        notes.append(f"liver {liver.value:.1f} HU is >= {LIVER_LOW_HU:g} HU but below the normal "
                     f"{LIVER_NORMAL_HU[0]:g}-{LIVER_NORMAL_HU[1]:g} HU and there is no spleen "
                     "to compare")
    return quantities, result


def trabecular_region(volume: Volume, vertebra_mask: np.ndarray,
                      erode_mm: float = BONE_ERODE_MM) -> np.ndarray:
    """The vertebral mask less every voxel within ``erode_mm`` of its surface (Euclidean
    distance in mm with the volume's anisotropic spacing, in 3-D so endplates are excluded as
    well as the cortical shell); the volume's edges count as outside."""
    mask = _check_mask(volume, vertebra_mask, "vertebra")
    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=volume.spacing)[1:-1, 1:-1, 1:-1]
    core = dist > erode_mm
    if not core.any():
        raise ValueError(f"the vertebral mask is thinner than 2 x {erode_mm:g} mm: no trabecular "
                         "region is left after excluding the cortex")
    return core


def bone_attenuation(volume: Volume, vertebra_mask: np.ndarray, *, level: str | None = "L1",
                     phase: str | Mapping[str, Any] | None = None, kvp: float | None = None,
                     erode_mm: float = BONE_ERODE_MM) -> tuple[Quantity, dict[str, Any]]:
    """Trabecular attenuation of a vertebral body and its class by ``ct-low-bone-attenuation``.

    The trabecular region is the mask eroded by ``erode_mm`` (3 mm by default: the cortical shell
    of a vertebral body is about 0.5-1 mm and partial volume spreads it by a voxel or two), see
    ``trabecular_region``; the value is the mean HU over it. The mask should be the vertebral
    body (posterior elements are cortical bone and distort the mean).

    Classification (L1; T12 or L2 when L1 is abnormal): <= 110 HU "present" (more than 90%
    specific; <= 100 HU "highly suggestive"), > 160 HU "absent" (above the about 90% sensitive
    threshold), in between "indeterminate" with the balanced 135 HU threshold reported. Contrast
    (about +10-20 HU in portal venous phase) and non-120 kVp are noted, not corrected.

    Returns (quantity, classification) with classification {"finding", "state", "band",
    "criteria", "knowledge", "phase", "notes"}."""
    core = trabecular_region(volume, vertebra_mask, erode_mm)
    name = f"{level} vertebra" if level else "vertebra"
    loc = where(volume, core, f"{name} trabecular bone")
    value = float(volume.hu[core].astype(np.float64).mean())
    q = Quantity(f"{name} trabecular attenuation", value, HU, loc,
                 f"mean HU of the vertebral mask eroded by {erode_mm:g} mm (cortex excluded), "
                 f"{loc['voxels']} voxels", BONE_KB)
    if value <= BONE_HIGHLY_SUGGESTIVE_HU:
        state, band = "present", f"<= {BONE_HIGHLY_SUGGESTIVE_HU:g} HU: highly suggestive of " \
                                 "osteoporosis"
    elif value <= BONE_SPECIFIC_HU:
        state, band = "present", f"<= {BONE_SPECIFIC_HU:g} HU: more than 90% specific for " \
                                 "osteoporosis"
    elif value <= BONE_SENSITIVE_HU:
        side = "at or below" if value <= BONE_BALANCED_HU else "above"
        state, band = "indeterminate", (f"{BONE_SPECIFIC_HU:g}-{BONE_SENSITIVE_HU:g} HU, {side} "
                                        f"the balanced {BONE_BALANCED_HU:g} HU threshold")
    else:
        state, band = "absent", f"> {BONE_SENSITIVE_HU:g} HU: above the about 90% sensitive " \
                                "threshold"
    notes: list[str] = []
    phase_name = _phase_name(phase)
    if phase_name not in ("unenhanced", "unknown"):
        notes.append(f"phase {phase_name}: intravenous contrast raises trabecular attenuation "
                     "(about 10-20 HU in portal venous phase)")
    elif phase_name == "unknown":
        notes.append("phase unknown: contrast would raise trabecular attenuation by about "
                     "10-20 HU")
    if kvp is not None and abs(float(kvp) - 120.0) > 1:
        notes.append(f"tube voltage {kvp:g} kVp: thresholds were derived at 120 kVp")
    if level is None or level.upper() not in BONE_LEVELS:
        notes.append(f"level {level or 'not given'}: the thresholds are for L1 (T12 or L2 when "
                     "L1 is fractured or abnormal)")
    notes.append("HU is not a DXA T-score: a low value flags the patient for DXA")
    q.notes = list(notes)
    criteria = (f"{BONE_KB}: L1 trabecular attenuation <= {BONE_SENSITIVE_HU:g} HU about 90% "
                f"sensitive, <= {BONE_SPECIFIC_HU:g} HU more than 90% specific, about "
                f"{BONE_BALANCED_HU:g} HU balanced, <= {BONE_HIGHLY_SUGGESTIVE_HU:g} HU highly "
                "suggestive of osteoporosis (Pickhardt 2013)")
    return q, {"finding": "low vertebral bone attenuation", "state": state, "band": band,
               "criteria": criteria, "knowledge": BONE_KB, "phase": phase_name, "notes": notes}


# Series description keywords (lower case, matched as words) -> phase, most specific first.
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"non[- ]?contrast|without contrast|\bw/o\b|unenhanced|non[- ]?enhanced|"
     r"pre[- ]?contrast|\bplain\b|\bnativ|\bnc\b|\bnect\b", "unenhanced"),
    (r"late arterial|early arterial|arterial|\bart\b|angio|\bcta\b|ctpa|\bhap\b|\blap\b",
     "arterial"),
    (r"portal[- ]?venous|portal|\bpv\b|\bpvp\b|venous|\bven\b", "portal_venous"),
    (r"delayed|delay|excretory|urogra|equilibrium|\blate\b|\b\d+\s*min", "delayed"),
)


def _text(headers: Any, key: str) -> str:
    value = headers.get(key) if hasattr(headers, "get") else None
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return str(value).strip()


def _seconds(value: str) -> float | None:
    """Seconds since midnight of a DICOM TM (HHMMSS.FFFFFF, also HH:MM:SS)."""
    value = value.replace(":", "").strip()
    if not re.fullmatch(r"\d{2,6}(\.\d+)?", value):
        return None
    whole, _, frac = value.partition(".")
    whole = whole.ljust(6, "0")
    try:
        t = datetime.strptime(whole, "%H%M%S")
    except ValueError:
        return None
    return t.hour * 3600 + t.minute * 60 + t.second + (float(f"0.{frac}") if frac else 0.0)


def _from_headers(headers: Any) -> dict[str, Any]:
    evidence: list[str] = []
    agent = _text(headers, "ContrastBolusAgent")
    route = _text(headers, "ContrastBolusRoute")
    if agent:
        evidence.append(f"ContrastBolusAgent {agent!r}" + (f" ({route})" if route else ""))
    phase = None
    for key in ("SeriesDescription", "ProtocolName", "ImageComments"):
        text = _text(headers, key).lower()
        if not text:
            continue
        for pattern, name in _KEYWORDS:
            m = re.search(pattern, text)
            if m:
                phase = name
                evidence.append(f"{key} {_text(headers, key)!r}: keyword {m.group(0)!r} -> {name}")
                break
        if phase:
            break
    start = _seconds(_text(headers, "ContrastBolusStartTime"))
    acq, acq_key = None, ""
    for key in ("AcquisitionTime", "ContentTime", "SeriesTime"):
        acq = _seconds(_text(headers, key))
        if acq is not None:
            acq_key = key
            break
    timed = None
    if start is not None and acq is not None:
        delay = acq - start
        if delay < 0:
            delay += 86400.0  # crossed midnight
        for lo, hi, name, window in TIMING_WINDOWS:
            if lo <= delay < hi:
                timed = name
                evidence.append(f"{acq_key} - ContrastBolusStartTime = {delay:.0f} s: {window}")
                break
    if phase is None and timed is not None:
        phase = timed
    elif phase is not None and timed is not None and timed not in (phase, "unknown"):
        evidence.append(f"timing suggests {timed}, the description {phase}; the description kept")
    if phase == "unenhanced" and agent:
        evidence.append("the description says unenhanced although a contrast agent is recorded")
    contrast = None
    if phase == "unenhanced":
        contrast = False
    elif phase is not None or agent or start is not None:
        contrast = True
    if phase is None and contrast:
        evidence.append("contrast recorded, phase not stated")
    return {"phase": phase or "unknown", "basis": "headers" if evidence else "none",
            "contrast": contrast, "evidence": evidence}


def contrast_phase(volume: Volume, vessel_masks: Mapping[str, np.ndarray] | None = None,
                   headers: Any = None) -> dict[str, Any]:
    """The contrast phase from aortic and portal vein attenuation when an "aorta" (and
    optionally "portal_vein") mask is given, else from the headers (a pydicom Dataset or a dict
    keyed by DICOM keyword: SeriesDescription/ProtocolName keywords, ContrastBolusAgent,
    ContrastBolusStartTime with AcquisitionTime).

    Attenuation rules (``PHASE_RULES``): aorta <= 65 HU (unenhanced blood <= 45 HU,
    ct-hounsfield-units-windowing, plus the 20 HU enhancement criterion, ct-contrast-phases) ->
    unenhanced. With a portal vein, MedGate's own cut-offs: aorta >= 150 HU and aorta - portal
    >= 50 HU -> arterial; aorta < 150 HU and |aorta - portal| <= 20 HU -> delayed; portal >=
    100 HU otherwise -> portal_venous. An enhanced aorta alone gives contrast but no phase (the
    headers may name it).

    Returns {"phase", "basis" ("attenuation"/"headers"/"none"), "contrast" (True/False/None),
    "evidence" (list of lines), "quantities", "knowledge"}."""
    hdr = _from_headers(headers) if headers is not None else None
    masks = {k: v for k, v in (vessel_masks or {}).items() if v is not None and np.any(v)}
    aorta_mask = masks.get("aorta")
    if aorta_mask is None:
        if hdr is not None and hdr["basis"] == "headers":
            return {**hdr, "quantities": [], "knowledge": PHASE_KB}
        return {"phase": "unknown", "basis": "none", "contrast": None,
                "evidence": ["no aorta segment and no phase in the headers"], "quantities": [],
                "knowledge": PHASE_KB}
    method = "mean HU over the segmented vessel lumen"
    aorta = _mean(volume, aorta_mask, "aorta", PHASE_KB, method)
    quantities = [aorta]
    portal = None
    if masks.get("portal_vein") is not None:
        portal = _mean(volume, masks["portal_vein"], "portal vein", PHASE_KB, method)
        quantities.append(portal)
    r = PHASE_RULES
    a = aorta.value
    evidence = [f"aorta {a:.0f} HU" + (f", portal vein {portal.value:.0f} HU" if portal else "")]
    own = "(MedGate's cut-off; not in the knowledge base)"
    phase, contrast = "unknown", True
    if a <= r["unenhanced_aorta_max"]:
        phase, contrast = "unenhanced", False
        evidence.append(f"aorta <= {r['unenhanced_aorta_max']:g} HU: unenhanced blood (about "
                        f"30-45 HU, {HU_KB}) without a >= {ENHANCEMENT_HU:g} HU enhancement "
                        f"({PHASE_KB})")
    elif portal is None:
        evidence.append(f"aorta > {r['unenhanced_aorta_max']:g} HU: enhanced; without a portal "
                        "vein segment the phase is not determined by attenuation")
    else:
        p = portal.value
        if a >= r["arterial_aorta_min"] and a - p >= r["arterial_aorta_minus_portal_min"]:
            phase = "arterial"
            evidence.append(f"aorta >= {r['arterial_aorta_min']:g} HU and aorta - portal "
                            f">= {r['arterial_aorta_minus_portal_min']:g} HU {own}")
        elif (a < r["delayed_aorta_max"] and abs(a - p) <= r["delayed_difference_max"]
              and p > r["unenhanced_aorta_max"]):
            phase = "delayed"
            evidence.append(f"aorta < {r['delayed_aorta_max']:g} HU and |aorta - portal| <= "
                            f"{r['delayed_difference_max']:g} HU: equilibrium {own}")
        elif p >= r["portal_enhanced_min"]:
            phase = "portal_venous"
            evidence.append(f"portal vein >= {r['portal_enhanced_min']:g} HU, close to the aorta "
                            f"{own}")
        else:
            evidence.append("enhanced aorta, portal vein pattern fits no phase rule")
    if phase == "unknown" and hdr is not None and hdr["phase"] not in ("unknown", "unenhanced"):
        evidence += hdr["evidence"] + [f"phase {hdr['phase']} from the headers"]
        return {"phase": hdr["phase"], "basis": "headers", "contrast": True,
                "evidence": evidence, "quantities": quantities, "knowledge": PHASE_KB}
    if hdr is not None and hdr["phase"] != "unknown" and hdr["phase"] != phase:
        evidence.append(f"the headers suggest {hdr['phase']}: " + "; ".join(hdr["evidence"]))
    return {"phase": phase, "basis": "attenuation", "contrast": contrast, "evidence": evidence,
            "quantities": quantities, "knowledge": PHASE_KB}

