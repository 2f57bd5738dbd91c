"""DICOM Segmentation (binary, fractional or label map) -> boolean masks on a CT ``Volume``.

Each SEG frame names its source slice in its Derivation Image Sequence (Referenced SOP Instance
UID and, for an Enhanced CT, Referenced Frame Number); ``masks_from_seg`` places every segment's
frames on the volume's slices by that reference (highdicom 0.28
``Segmentation.get_pixels_by_source_instance`` / ``get_pixels_by_source_frame``). A SEG may
cover a subset of the slices: the other slices are empty.

Refused (ValueError, saying why): a SEG that references no slice of the volume, or a slice the
volume does not hold; a different Frame of Reference; frames of another size; frames whose
plane position, orientation or pixel spacing do not match the referenced slice (when the SEG
does not state Spatial Locations Preserved "YES", these checks are what allow highdicom's
source-frame indexing, ``ignore_spatial_locations=True``); Spatial Locations Preserved "NO".

``segment_role`` maps a segment's property type code (SNOMED CT, also legacy SNOMED RT "SRT"
codes through pydicom's SRT-to-SCT table) or its label to the role quantification needs:
"liver", "spleen", "vertebra", "aorta", "portal_vein" or "lung".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PydicomCode

from models.ct.volume import Volume

ROLES = ("liver", "spleen", "vertebra", "aorta", "portal_vein", "lung")

_VERTEBRAE = [f"C{i}Vertebra" for i in range(1, 8)] + [f"T{i}Vertebra" for i in range(1, 13)] \
    + [f"L{i}Vertebra" for i in range(1, 6)] + ["Vertebra"]
# Property type codes per role: SNOMED CT concepts of pydicom's code dictionary (PS3.16), plus
# left lung 44029006 and right lung 3341006 (PS3.16 CID 4), which it does not list by name.
_ROLE_CODES: dict[str, list[PydicomCode]] = {
    "liver": [codes.SCT.Liver],
    "spleen": [codes.SCT.Spleen],
    "aorta": [codes.SCT.Aorta, codes.SCT.ThoracicAorta, codes.SCT.AbdominalAorta,
              codes.SCT.DescendingAorta],
    "portal_vein": [codes.SCT.PortalVein],
    "vertebra": [getattr(codes.SCT, name) for name in _VERTEBRAE],
    "lung": [codes.SCT.Lung, PydicomCode("44029006", "SCT", "Left lung"),
             PydicomCode("3341006", "SCT", "Right lung"), codes.SCT.UpperLobeOfLung,
             codes.SCT.LowerLobeOfLung, codes.SCT.MiddleLobeOfRightLung,
             codes.SCT.StructureOfUpperLobeOfLeftLung],
}
# Segment labels (lower case, "_" and "-" read as spaces) per role: the organ name alone or with
# a side, level or generic qualifier ("liver", "Liver mask", "vertebrae_L1", "portal vein and
# splenic vein", "lung upper lobe left"); a label naming a lesion does not match.
_Q = r"(?: (?:mask|segmentation|seg|parenchyma|whole|total|structure|region|roi))*"
_ROLE_LABELS: dict[str, re.Pattern[str]] = {
    "liver": re.compile(rf"^(?:the )?(?:whole )?liver{_Q}$"),
    "spleen": re.compile(rf"^(?:the )?spleen{_Q}$"),
    "aorta": re.compile(rf"^(?:(?:thoracic|abdominal|descending|ascending) )?aorta"
                        rf"(?: (?:thoracic|abdominal|descending|ascending))?{_Q}$"),
    "portal_vein": re.compile(rf"^(?:main )?portal vein(?: and splenic vein)?{_Q}$"),
    "vertebra": re.compile(rf"^(?:(?:vertebra|vertebrae|vertebral body) ?)?[ctl]\d{{1,2}}"
                           rf"(?: (?:vertebra|vertebral body|body))?{_Q}$"
                           rf"|^(?:vertebra|vertebral body)(?: [ctl]\d{{1,2}})?{_Q}$"),
    "lung": re.compile(rf"^(?:(?:left|right) )?lungs?(?: (?:left|right))?"
                       rf"(?: (?:upper|middle|lower) lobe(?: (?:left|right))?)?{_Q}$"
                       rf"|^(?:(?:left|right) )?(?:upper|middle|lower) lobe(?: of)?"
                       rf"(?: (?:the )?(?:left|right))?(?: lung)?{_Q}$"),
}
_SRT = re.compile(r"^[A-Z]-[0-9A-Z]{4,5}$")


def _code_role(scheme: str, value: str) -> str | None:
    probe = PydicomCode(value, scheme, "?")
    for role, known in _ROLE_CODES.items():
        if any(probe == c for c in known):
            return role
    return None


def segment_role(label_or_code: Any) -> str | None:
    """The quantification role of a segment, from a code (pydicom or highdicom code, a
    ``models.base.Code``, a (scheme, value) pair, "SCT:10200004", "10200004", "SRT:T-62000",
    "T-62000") or a label ("Liver", "vertebrae_L1", "portal vein"); None when it is none of
    ``ROLES``."""
    if label_or_code is None:
        return None
    # a code object first: pydicom's Code is a NamedTuple (value, scheme_designator, ...)
    for scheme_attr, value_attr in (("scheme_designator", "value"), ("scheme", "value")):
        if hasattr(label_or_code, scheme_attr) and hasattr(label_or_code, value_attr):
            return _code_role(str(getattr(label_or_code, scheme_attr)),
                              str(getattr(label_or_code, value_attr)))
    if isinstance(label_or_code, (tuple, list)) and len(label_or_code) >= 2:
        return _code_role(str(label_or_code[0]), str(label_or_code[1]))
    text = str(label_or_code).strip()
    m = re.fullmatch(r"(SCT|SNOMED|SRT|SNM3)\s*:\s*(\S+)", text, flags=re.IGNORECASE)
    if m:
        scheme = m.group(1).upper()
        return _code_role("SCT" if scheme == "SNOMED" else scheme, m.group(2))
    if text.isdigit():
        return _code_role("SCT", text)
    if _SRT.fullmatch(text):
        return _code_role("SRT", text)
    label = re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", text.lower())).strip()
    for role, pattern in _ROLE_LABELS.items():
        if pattern.fullmatch(label):
            return role
    return None


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a SEG: its number, label, the key of its mask in ``SegmentMasks``, its
    property type and category (scheme, value, meaning) and its ``segment_role``."""

    number: int
    label: str
    key: str
    property_type: tuple[str, str, str]
    property_category: tuple[str, str, str]
    role: str | None
    algorithm_type: str
    fractional: bool

    @property
    def meaning(self) -> str:
        """The property type's code meaning ("Liver")."""
        return self.property_type[2]


class SegmentMasks(dict):
    """Masks keyed by segment label (``"label (#n)"`` when two segments share a label), with
    ``segments`` (key -> ``SegmentInfo``), ``seg_uid`` and the volume slices the SEG covers."""

    def __init__(self, masks: dict[str, np.ndarray], segments: dict[str, SegmentInfo],
                 seg_uid: str, covered_slices: tuple[int, ...]):
        super().__init__(masks)
        self.segments = segments
        self.seg_uid = seg_uid
        self.covered_slices = covered_slices

    def by_meaning(self, meaning: str) -> dict[str, np.ndarray]:
        """The masks whose property type meaning is ``meaning`` (case-insensitive)."""
        want = meaning.lower()
        return {k: self[k] for k, s in self.segments.items() if s.meaning.lower() == want}

    def role_mask(self, role: str) -> np.ndarray | None:
        """The union of the masks of one role (e.g. all lung lobes), or None."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        found = [self[k] for k, s in self.segments.items() if s.role == role]
        if not found:
            return None
        out = found[0].astype(bool) if found[0].dtype == bool else found[0] > 0
        for m in found[1:]:
            out = out | (m.astype(bool) if m.dtype == bool else m > 0)
        return out


def _code(concept: Any) -> tuple[str, str, str]:
    if concept is None:
        return ("", "", "")
    return (str(concept.scheme_designator), str(concept.value), str(concept.meaning))


def _frame_refs(seg: Any) -> list[dict[str, Any]]:
    """Per SEG frame: referenced source (uid, frame number), plane position, orientation and
    Spatial Locations Preserved."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg \
        else pydicom.Dataset()
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        refs, preserved = [], set()
        for der in item.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                frames = src.get("ReferencedFrameNumber")
                if frames is not None and not isinstance(frames, (list, MultiValue)):
                    frames = [frames]
                refs.append((str(src.ReferencedSOPInstanceUID),
                             tuple(int(f) for f in frames) if frames is not None else ()))
                preserved.add(str(src.get("SpatialLocationsPreserved", "")).upper())

        def group(name: str, attr: str, item=item):
            for ds in (item, shared):
                if name in ds and len(ds[name].value) and attr in ds[name].value[0]:
                    return ds[name].value[0][attr].value
            return None

        out.append({"refs": refs, "preserved": preserved,
                    "position": group("PlanePositionSequence", "ImagePositionPatient"),
                    "orientation": group("PlaneOrientationSequence", "ImageOrientationPatient"),
                    "spacing": group("PixelMeasuresSequence", "PixelSpacing")})
    return out


def _slice_position(volume: Volume, k: int) -> np.ndarray:
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    return np.asarray(volume.origin, dtype=np.float64) + d[:, 2] * k * float(volume.spacing[0])


def _check_geometry(volume: Volume, frames: list[dict[str, Any]], index: dict, seg_rows: int,
                    seg_cols: int) -> bool:
    """Raise when a frame does not sit on its referenced slice; True when every frame states
    Spatial Locations Preserved "YES" (highdicom may index by source without override)."""
    if (seg_rows, seg_cols) != tuple(volume.hu.shape[1:]):
        raise ValueError(f"the SEG frames are {seg_rows} x {seg_cols}, the volume's slices "
                         f"{volume.hu.shape[1]} x {volume.hu.shape[2]}: not the same pixel grid")
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    sz, sy, sx = (float(s) for s in volume.spacing)
    all_yes = True
    for n, f in enumerate(frames, start=1):
        if "NO" in f["preserved"]:
            raise ValueError(f"SEG frame {n} states Spatial Locations Preserved NO: its pixels "
                             "do not lie on the source slice's pixels")
        all_yes &= f["preserved"] == {"YES"}
        if f["spacing"] is not None:
            row_mm, col_mm = (float(v) for v in f["spacing"])
            if abs(row_mm - sy) > 1e-3 * sy + 1e-4 or abs(col_mm - sx) > 1e-3 * sx + 1e-4:
                raise ValueError(f"SEG frame {n} pixel spacing {row_mm:g} x {col_mm:g} mm differs "
                                 f"from the volume's {sy:g} x {sx:g} mm")
        if f["orientation"] is not None:
            iop = np.asarray([float(v) for v in f["orientation"]])
            if np.abs(iop[:3] - d[:, 0]).max() > 1e-3 or np.abs(iop[3:] - d[:, 1]).max() > 1e-3:
                raise ValueError(f"SEG frame {n} orientation {list(iop)} differs from the "
                                 "volume's")
        if f["position"] is None:
            if not f["preserved"] == {"YES"}:
                raise ValueError(f"SEG frame {n} has no plane position and does not state "
                                 "Spatial Locations Preserved YES: its alignment is unknown")
            continue
        ipp = np.asarray([float(v) for v in f["position"]])
        for ref in f["refs"]:
            for k in index.get(ref, ()):
                off = ipp - _slice_position(volume, k)
                along = abs(float(off @ d[:, 2]))
                across = max(abs(float(off @ d[:, 0])) / sx, abs(float(off @ d[:, 1])) / sy)
                if along > max(0.05, 0.01 * sz) or across > 0.5:
                    raise ValueError(f"SEG frame {n} at {list(np.round(ipp, 3))} does not lie on "
                                     f"volume slice {k} ({along:.3f} mm along the normal, "
                                     f"{across:.2f} pixels in plane)")
    return all_yes


def masks_from_seg(seg_path_or_dataset: str | Path | pydicom.Dataset, volume: Volume, *,
                   frame_of_reference_uid: str | None = None,
                   fractional_threshold: float | None = 0.5) -> SegmentMasks:
    """Every segment of a DICOM SEG as a mask on ``volume`` (see the module docstring).

    ``frame_of_reference_uid`` is the CT series' Frame of Reference UID (by default the
    volume's ``frame_of_reference_uid``); a SEG in another frame is refused. Binary and label-map
    segments give bool masks; fractional segments are thresholded at ``fractional_threshold``
    (fraction >= threshold) or, with None, returned as float32 fractions 0..1."""
    import highdicom as hd

    if isinstance(seg_path_or_dataset, (str, Path)):
        seg = hd.seg.segread(seg_path_or_dataset)
    elif isinstance(seg_path_or_dataset, hd.seg.Segmentation):
        seg = seg_path_or_dataset
    elif isinstance(seg_path_or_dataset, pydicom.Dataset):
        seg = hd.seg.Segmentation.from_dataset(seg_path_or_dataset, copy=False)
    else:
        raise TypeError("masks_from_seg takes a path, a pydicom Dataset or a highdicom "
                        "Segmentation")
    seg_for = seg.get("FrameOfReferenceUID")
    if frame_of_reference_uid is None:
        frame_of_reference_uid = getattr(volume, "frame_of_reference_uid", None)
    if frame_of_reference_uid is not None and seg_for and seg_for != frame_of_reference_uid:
        raise ValueError(f"the SEG's Frame of Reference {seg_for} is not the volume's "
                         f"{frame_of_reference_uid}")
    frames = _frame_refs(seg)
    enhanced = bool(volume.frames)
    index: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for k, uid in enumerate(volume.slice_uids):
        key = (uid, (int(volume.frames[k]),)) if enhanced else (uid, ())
        index.setdefault(key, []).append(k)
    refs = {r for f in frames for r in f["refs"]}
    if not refs:
        raise ValueError("the SEG frames reference no source image (no Derivation Image "
                         "Sequence): they cannot be placed on the volume's slices")
    if not enhanced:
        refs = {(uid, ()) for uid, _ in refs}
        for f in frames:
            f["refs"] = [(uid, ()) for uid, _ in f["refs"]]
    found = refs & set(index)
    if not found:
        ref_series = {s.SeriesInstanceUID for s in seg.get("ReferencedSeriesSequence", [])}
        why = (f"it references series {', '.join(sorted(ref_series))}, the volume is "
               f"{volume.series_uid}" if ref_series and volume.series_uid not in ref_series
               else "none of its referenced instances is a slice of the volume")
        raise ValueError(f"the SEG does not belong to this volume: {why}")
    missing = refs - set(index)
    if missing:
        some = ", ".join(f"{u}" + (f" frame {fr[0]}" if fr else "") for u, fr in
                         sorted(missing)[:3])
        raise ValueError(f"the SEG references {len(missing)} source image(s) the volume does not "
                         f"hold ({some}): its masks would be cut")
    preserved = _check_geometry(volume, frames, index, int(seg.Rows), int(seg.Columns))
    covered = tuple(sorted(k for r in found for k in index[r]))

    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    masks: dict[str, np.ndarray] = {}
    infos: dict[str, SegmentInfo] = {}
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    for number, label in zip(seg.segment_numbers, labels, strict=True):
        desc = seg.get_segment_description(number)
        key = label if labels.count(label) == 1 else f"{label} (#{number})"
        options = dict(segment_numbers=[number], ignore_spatial_locations=not preserved,
                       assert_missing_frames_are_empty=True)
        if enhanced:
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=volume.slice_uids[0],
                source_frame_numbers=[int(f) for f in volume.frames], **options)
        else:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(volume.slice_uids), **options)
        data = pixels[..., 0]
        if fractional and fractional_threshold is None:
            mask = data.astype(np.float32)
        elif fractional:
            mask = data >= fractional_threshold
        else:
            mask = data > 0
        masks[key] = mask
        prop = _code(desc.segmented_property_type)
        role = segment_role(desc.segmented_property_type) or segment_role(label)
        algorithm = getattr(desc.algorithm_type, "value", desc.algorithm_type)
        infos[key] = SegmentInfo(number=int(number), label=str(label), key=key,
                                 property_type=prop,
                                 property_category=_code(desc.segmented_property_category),
                                 role=role, algorithm_type=str(algorithm),
                                 fractional=fractional)
    return SegmentMasks(masks, infos, str(seg.SOPInstanceUID), covered)
