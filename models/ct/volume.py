"""A CT series as one volume: slices sorted along the slice normal, geometry checked, Hounsfield
units from Rescale Slope and Intercept.

``assemble`` turns the files of one series into one ``Volume`` or raises ``VolumeError`` (with a
``reason`` slug) when they are not one volume; ``assemble_all`` splits a series that legitimately
holds several volumes (several acquisitions, temporal positions, stacks or orientations) and
assembles each group on its own, reporting what still fails. Classic CT Image Storage (one file
per slice) and Enhanced / Legacy Converted Enhanced CT Image Storage (one multi-frame file, per
frame functional groups) are read; headers first (``stop_before_pixels``) to sort and check,
pixels afterwards, one slice or frame at a time, straight into the float32 volume.

Geometry (PS3.3 C.7.6.2 Image Plane Module, C.7.6.2.1.1): Image Orientation (Patient) holds the
row direction cosine (IOP[0:3], the direction of increasing column index) and the column
direction cosine (IOP[3:6], increasing row index); the slice normal is their cross product;
a slice's position along the normal is dot(normal, Image Position (Patient)). Slices are sorted
by increasing position, so the volume's third direction is +normal and voxel (k, i, j)
(slice, row, column) lies at ``origin + direction @ (j * spacing[2], i * spacing[1],
k * spacing[0])``. Pixel Spacing is (row spacing, column spacing) = (spacing[1], spacing[2]).

Tolerances (module constants):

* orientation: direction cosines agree within ``ORIENTATION_TOL`` (1e-3, about 0.06 degrees);
  each cosine has unit length and the two are orthogonal within the same tolerance;
* duplicate position: two slices closer than ``DUPLICATE_TOL_MM`` (0.01 mm) along the normal;
* gap: a step between consecutive positions larger than ``GAP_FACTOR`` (1.5) x the reference
  step (the lower median step);
* varying spacing: a step, or a position's distance from the straight line first-to-last,
  off by more than max(``SPACING_TOL_REL`` (1 %) of the reference step, ``SPACING_TOL_MM``
  (0.02 mm, so positions written with two decimals still pass)), without a gap;
* gantry tilt: a slice position off the normal line through slice 0 by more than
  ``TILT_OFFSET_TOL_MM`` (0.02 mm in-plane), or a Gantry/Detector Tilt beyond ``TILT_TOL_DEG``
  (0.01 degrees) in the header; the message gives the angle;
* pixel spacing: equal within ``PIXEL_SPACING_TOL_MM`` (0.001 mm).

A single slice is a volume of one slice whose slice spacing is Spacing Between Slices, else
Slice Thickness; without either it is refused with "no-geometry".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Volume:
    """One CT volume. ``hu`` is float32 (slices, rows, columns) in Hounsfield units, slice 0
    first along the slice normal; ``spacing`` is (slice, row, column) in mm (the slice spacing
    is the distance between consecutive slice positions, not Slice Thickness); ``origin`` the
    patient position (x, y, z mm) of the first voxel of slice 0; ``direction`` the 3 x 3 matrix
    whose columns are the column (x), row (y) and slice (normal) direction cosines;
    ``slice_uids`` the SOP Instance UID of each slice (for an Enhanced CT, the one instance's
    UID with ``frames`` giving each slice's frame number, from 1)."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    slice_uids: tuple[str, ...]
    series_uid: str
    frames: tuple[int, ...] = ()
    slice_thickness: float | None = None
    notes: list[str] = field(default_factory=list)
    #: added with assembly: the Frame of Reference UID the positions are in (None if absent)
    frame_of_reference_uid: str | None = None

    @property
    def voxel_ml(self) -> float:
        """The volume of one voxel in millilitres (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.hu.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- errors

#: Every reason a VolumeError may carry.
REASONS = (
    "unreadable",            # not a DICOM file, or its pixel data cannot be decoded
    "not-ct",                # not a CT image (SOP Class / Modality)
    "localizer",             # a CT localizer (scout, Image Type value 3 LOCALIZER)
    "several-series",        # files of more than one Series Instance UID, none chosen
    "too-few-slices",        # nothing left to assemble
    "no-geometry",           # no position / orientation / pixel spacing (or slice spacing)
    "no-rescale",            # no Rescale Slope and Intercept (C.8.2.1, C.11.1)
    "not-hu",                # a Rescale Type other than HU
    "mixed-orientation",     # slices of different Image Orientation (Patient)
    "several-frames-of-reference",
    "several-acquisitions",  # overlapping acquisitions, or several temporal positions
    "several-stacks",        # an Enhanced CT with several Stack IDs
    "mixed-size",            # different Rows / Columns / Pixel Spacing
    "duplicate-instance",    # one SOP Instance (and frame) given twice at different positions
    "duplicate-position",    # two slices at the same position along the normal
    "gantry-tilt",           # positions not along the normal, or Gantry/Detector Tilt != 0
    "gap",                   # a step much larger than the others (missing slices)
    "varying-spacing",       # steps that differ without a clear gap
)


class VolumeError(ValueError):
    """The files are not one CT volume. ``reason`` is a slug from ``REASONS``; the message names
    the instances (SOP Instance UID, frame, file name) and positions concerned, never patient
    data. ``paths`` are the files the error is about; ``series_uid`` their series when known."""

    def __init__(self, reason: str, message: str, *, paths: Iterable[Path] = (),
                 series_uid: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.paths = tuple(dict.fromkeys(Path(p) for p in paths))
        self.series_uid = series_uid

    def __repr__(self) -> str:
        return f"VolumeError({self.reason!r}, {self.message!r})"

    def __reduce__(self):  # picklable (worker processes pass exceptions on)
        return (type(self), (self.reason, self.message),
                {"paths": self.paths, "series_uid": self.series_uid})


# --------------------------------------------------------------------------- constants

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
MULTIFRAME_CT = (ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE)
CT_SOP_CLASSES = (CT_IMAGE_STORAGE, *MULTIFRAME_CT)

ORIENTATION_TOL = 1e-3
DUPLICATE_TOL_MM = 0.01
GAP_FACTOR = 1.5
SPACING_TOL_REL = 0.01
SPACING_TOL_MM = 0.02
TILT_OFFSET_TOL_MM = 0.02
TILT_TOL_DEG = 0.01
PIXEL_SPACING_TOL_MM = 1e-3
_LISTED = 4  # instances named in one message before "and N more"


# --------------------------------------------------------------------------- headers


@dataclass
class _Slice:
    """The header facts of one slice: a single-frame instance or one frame of a multi-frame."""

    path: Path
    sop_uid: str
    frame: int | None  # 1-based frame number of a multi-frame instance; None for single-frame
    series_uid: str
    sop_class: str
    modality: str
    image_type: tuple[str, ...]
    frame_of_reference: str | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None
    thickness: float | None
    spacing_between: float | None
    slope: float | None
    intercept: float | None
    rescale_type: str | None
    modality_lut: bool
    acquisition: int | None
    temporal: int | None
    stack: str | None
    tilt_deg: float | None
    along: float = 0.0  # position along the slice normal, set while sorting

    @property
    def label(self) -> str:
        frame = f" frame {self.frame}" if self.frame is not None else ""
        return f"{self.sop_uid}{frame} ({self.path.name})"


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    f = _float(value)
    return None if f is None else int(round(f))


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.all(np.isfinite(out)) else None


def _item(ds: Any, keyword: str) -> Any:
    seq = getattr(ds, keyword, None) if ds is not None else None
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _group(frame_item: Any, shared: Any, keyword: str) -> Any:
    """The first item of a functional group macro's sequence, per-frame first, then shared
    (PS3.3 C.7.6.16 Multi-frame Functional Groups Module: a macro is in one or the other)."""
    return _item(frame_item, keyword) or _item(shared, keyword)


def _items(raw: Sequence[Path | str | tuple[Path | str, str]]) -> list[tuple[Path, str | None]]:
    out: list[tuple[Path, str | None]] = []
    for entry in raw:
        if isinstance(entry, tuple | list):
            out.append((Path(entry[0]), str(entry[1]) if len(entry) > 1 else None))
        else:
            out.append((Path(entry), None))
    return out


def _read_header(path: Path, known_uid: str | None) -> list[_Slice]:
    """The slices of one file from its header alone (no pixel data is read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise VolumeError("unreadable", f"{path.name} cannot be read as DICOM: "
                          f"{type(exc).__name__}: {exc}", paths=[path]) from exc
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta
                                              else "") or "")
    sop_uid = str(ds.get("SOPInstanceUID") or known_uid or path.name)
    common = dict(
        path=path, sop_uid=sop_uid, series_uid=str(ds.get("SeriesInstanceUID") or ""),
        sop_class=sop_class, modality=str(ds.get("Modality") or ""),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        frame_of_reference=str(ds.get("FrameOfReferenceUID") or "") or None,
        rows=_int(ds.get("Rows")), columns=_int(ds.get("Columns")),
        modality_lut="ModalityLUTSequence" in ds)
    if sop_class not in MULTIFRAME_CT:
        # Classic single-frame CT: Image Plane Module (C.7.6.2) and CT Image Module (C.8.2.1),
        # whose Rescale Intercept / Slope (type 1) give HU (C.11.1 Modality LUT Module).
        ps = _floats(ds.get("PixelSpacing"), 2)
        return [_Slice(
            frame=None, **common,
            position=_floats(ds.get("ImagePositionPatient"), 3),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
            thickness=_float(ds.get("SliceThickness")),
            spacing_between=_float(ds.get("SpacingBetweenSlices")),
            slope=_float(ds.get("RescaleSlope")), intercept=_float(ds.get("RescaleIntercept")),
            rescale_type=str(ds.get("RescaleType") or "") or None,
            acquisition=_int(ds.get("AcquisitionNumber")),
            temporal=_int(ds.get("TemporalPositionIdentifier")), stack=None,
            tilt_deg=_float(ds.get("GantryDetectorTilt")))]

    # Enhanced CT (C.8.15): geometry and rescale per frame, from the Per-frame or the Shared
    # Functional Groups Sequence (C.7.6.16): Pixel Measures (C.7.6.16.2.1), Frame Content
    # (C.7.6.16.2.2), Plane Position (Patient) (C.7.6.16.2.3), Plane Orientation (Patient)
    # (C.7.6.16.2.4), (CT) Pixel Value Transformation (C.7.6.16.2.9, C.8.15.3) and the CT
    # Acquisition Details Macro (C.8.15.3) with Gantry/Detector Tilt.
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    n_frames = _int(ds.get("NumberOfFrames")) or 0
    if n_frames < 1 or len(per_frame) != n_frames:
        raise VolumeError("unreadable", f"{sop_uid} ({path.name}): Number of Frames "
                          f"{n_frames} but {len(per_frame)} Per-frame Functional Groups items",
                          paths=[path], series_uid=common["series_uid"] or None)
    top_acq = _int(ds.get("AcquisitionNumber"))
    out = []
    for n, frame_item in enumerate(per_frame, start=1):
        position = _group(frame_item, shared, "PlanePositionSequence")
        orientation = _group(frame_item, shared, "PlaneOrientationSequence")
        measures = _group(frame_item, shared, "PixelMeasuresSequence")
        transform = _group(frame_item, shared, "PixelValueTransformationSequence")
        content = _group(frame_item, None, "FrameContentSequence")
        details = _group(frame_item, shared, "CTAcquisitionDetailsSequence")
        ps = _floats(measures.get("PixelSpacing") if measures else None, 2)
        acq = _int(content.get("FrameAcquisitionNumber")) if content else None
        out.append(_Slice(
            frame=n, **common,
            position=_floats(position.get("ImagePositionPatient") if position else None, 3),
            orientation=_floats(orientation.get("ImageOrientationPatient")
                                if orientation else None, 6),
            pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
            thickness=_float(measures.get("SliceThickness")) if measures else None,
            spacing_between=_float(measures.get("SpacingBetweenSlices")) if measures else None,
            slope=_float(transform.get("RescaleSlope")) if transform else None,
            intercept=_float(transform.get("RescaleIntercept")) if transform else None,
            rescale_type=(str(transform.get("RescaleType") or "") or None) if transform
            else None,
            acquisition=acq if acq is not None else top_acq,
            temporal=_int(content.get("TemporalPositionIndex")) if content else None,
            stack=(str(content.get("StackID") or "") or None) if content else None,
            tilt_deg=_float(details.get("GantryDetectorTilt")) if details else None))
    return out


# --------------------------------------------------------------------------- checks


def _names(slices: Sequence[_Slice]) -> str:
    labels = [s.label for s in slices[:_LISTED]]
    more = len(slices) - _LISTED
    return ", ".join(labels) + (f" and {more} more" if more > 0 else "")


def _paths(slices: Iterable[_Slice]) -> list[Path]:
    return [s.path for s in slices]


def _fail(reason: str, message: str, slices: Sequence[_Slice]) -> VolumeError:
    series = next((s.series_uid for s in slices if s.series_uid), None)
    return VolumeError(reason, message, paths=_paths(slices), series_uid=series)


def _is_ct(s: _Slice) -> bool:
    if s.sop_class:
        return s.sop_class in CT_SOP_CLASSES
    return s.modality.upper() == "CT"


def _is_localizer(s: _Slice) -> bool:
    # CT Image Module (C.8.2.1.1.1): Image Type value 3 AXIAL or LOCALIZER
    return len(s.image_type) >= 3 and s.image_type[2] == "LOCALIZER"


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= ORIENTATION_TOL)


def _unit_axes(iop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    row, col = iop[:3], iop[3:]
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(nr - 1) > ORIENTATION_TOL or abs(nc - 1) > ORIENTATION_TOL:
        return None
    row, col = row / nr, col / nc
    if abs(float(np.dot(row, col))) > ORIENTATION_TOL:
        return None
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _fmt(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.6g}"


def _check_kinds(slices: list[_Slice]) -> None:
    bad = [s for s in slices if not _is_ct(s)]
    if bad:
        what = sorted({s.modality or s.sop_class or "unknown" for s in bad})
        raise _fail("not-ct", f"{len(bad)} instance(s) are not CT images "
                    f"({', '.join(what)}): {_names(bad)}", bad)
    scouts = [s for s in slices if _is_localizer(s)]
    if scouts:
        raise _fail("localizer", f"{len(scouts)} CT localizer image(s) (Image Type LOCALIZER) "
                    f"are projections, not slices: {_names(scouts)}", scouts)


def _check_geometry(slices: list[_Slice]) -> None:
    missing = [s for s in slices if s.position is None or s.orientation is None
               or s.pixel_spacing is None or not s.rows or not s.columns]
    if missing:
        raise _fail("no-geometry", "no Image Position / Orientation (Patient), Pixel Spacing or "
                    f"Rows / Columns (C.7.6.2 Image Plane Module) for {_names(missing)}",
                    missing)
    bad = [s for s in slices if _unit_axes(s.orientation) is None]  # type: ignore[arg-type]
    if bad:
        raise _fail("no-geometry", "Image Orientation (Patient) is not two orthogonal unit "
                    f"vectors for {_names(bad)}", bad)
    ref = slices[0].orientation
    other = [s for s in slices if not _same_orientation(s.orientation, ref)]  # type: ignore
    if other:
        kinds = _orientation_groups(slices)
        desc = "; ".join(f"{len(g)} slice(s) with orientation "
                         f"{'/'.join(_fmt(v) for v in g[0].orientation)}"  # type: ignore
                         for g in kinds[:_LISTED])
        if len(kinds) > _LISTED:
            desc += f" and {len(kinds) - _LISTED} more"
        raise _fail("mixed-orientation", f"the slices have {len(kinds)} orientations ({desc}); "
                    f"e.g. {_names([slices[0], other[0]])} differ. assemble_all splits them",
                    slices)
    frames = {s.frame_of_reference for s in slices}
    if len(frames) > 1:
        raise _fail("several-frames-of-reference", f"{len(frames)} Frame of Reference UIDs: "
                    "positions in different frames of reference cannot be compared", slices)


def _orientation_groups(slices: list[_Slice]) -> list[list[_Slice]]:
    groups: list[list[_Slice]] = []
    for s in slices:
        for g in groups:
            if _same_orientation(g[0].orientation, s.orientation):  # type: ignore[arg-type]
                g.append(s)
                break
        else:
            groups.append([s])
    return groups


def _overlapping(by_key: dict[Any, list[_Slice]]) -> bool:
    """Whether the position ranges along the normal of any two groups overlap."""
    ranges = {k: (min(s.along for s in g), max(s.along for s in g)) for k, g in by_key.items()}
    keys = list(by_key)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            lo, hi = ranges[a]
            if any(lo - DUPLICATE_TOL_MM <= s.along <= hi + DUPLICATE_TOL_MM for s in by_key[b]):
                return True
            lo, hi = ranges[b]
            if any(lo - DUPLICATE_TOL_MM <= s.along <= hi + DUPLICATE_TOL_MM for s in by_key[a]):
                return True
    return False


def _by(slices: Iterable[_Slice], attr: str) -> dict[Any, list[_Slice]]:
    out: dict[Any, list[_Slice]] = {}
    for s in slices:
        out.setdefault(getattr(s, attr), []).append(s)
    return out


def _check_acquisitions(slices: list[_Slice], notes: list[str]) -> None:
    temporal = _by(slices, "temporal")
    if len(temporal) > 1:
        desc = ", ".join(f"{k if k is not None else 'none'}: {len(g)} slice(s)"
                         for k, g in list(temporal.items())[:_LISTED])
        if len(temporal) > _LISTED:
            desc += f" and {len(temporal) - _LISTED} more"
        raise _fail("several-acquisitions", f"{len(temporal)} temporal positions (Temporal "
                    f"Position Identifier / Index {desc}): one volume per time point; "
                    "assemble_all splits them", slices)
    stacks = _by(slices, "stack")
    if len(stacks) > 1:
        raise _fail("several-stacks", f"{len(stacks)} stacks (Stack ID "
                    f"{', '.join(str(k) for k in stacks)}) in one multi-frame instance; "
                    "assemble_all splits them", slices)
    acquisitions = _by(slices, "acquisition")
    if len(acquisitions) > 1:
        desc = ", ".join(f"{k if k is not None else 'none'}: {len(g)} slice(s) "
                         f"{_fmt(min(s.along for s in g))}..{_fmt(max(s.along for s in g))} mm"
                         for k, g in list(acquisitions.items())[:_LISTED])
        if len(acquisitions) > _LISTED:
            desc += f" and {len(acquisitions) - _LISTED} more"
        if _overlapping(acquisitions):
            raise _fail("several-acquisitions", f"{len(acquisitions)} acquisitions cover "
                        f"overlapping positions along the normal (Acquisition Number {desc}); "
                        "assemble_all splits them", slices)
        notes.append(f"{len(acquisitions)} acquisitions of adjacent, non-overlapping ranges "
                     f"joined into one volume (Acquisition Number {desc})")


def _check_sizes(slices: list[_Slice]) -> None:
    first = slices[0]
    odd = [s for s in slices if (s.rows, s.columns) != (first.rows, first.columns)]
    if odd:
        sizes = sorted({f"{s.rows}x{s.columns}" for s in slices})
        raise _fail("mixed-size", f"slices of different Rows x Columns ({', '.join(sizes)}): "
                    f"{_names([first, *odd])}", slices)
    ps0 = np.array(first.pixel_spacing)
    odd = [s for s in slices
           if np.max(np.abs(np.array(s.pixel_spacing) - ps0)) > PIXEL_SPACING_TOL_MM]
    if odd:
        spacings = sorted({"/".join(_fmt(v) for v in s.pixel_spacing)  # type: ignore
                           for s in slices})
        raise _fail("mixed-size", f"slices of different Pixel Spacing ({', '.join(spacings)} "
                    f"mm): {_names([first, *odd])}", slices)


def _check_rescale(slices: list[_Slice]) -> None:
    lut = [s for s in slices if s.modality_lut and (s.slope is None or s.intercept is None)]
    if lut:
        raise _fail("no-rescale", "a Modality LUT Sequence instead of Rescale Slope / Intercept "
                    f"(C.11.1) is not supported for CT: {_names(lut)}", lut)
    missing = [s for s in slices if s.slope is None or s.intercept is None]
    if missing:
        raise _fail("no-rescale", "no Rescale Slope / Intercept (type 1 in the CT Image Module, "
                    "C.8.2.1; the Pixel Value Transformation group for an Enhanced CT): "
                    f"{_names(missing)}", missing)
    zero = [s for s in slices if s.slope == 0]
    if zero:
        raise _fail("no-rescale", f"Rescale Slope 0 for {_names(zero)}", zero)
    other = [s for s in slices if s.rescale_type and s.rescale_type.upper() != "HU"]
    if other:
        kinds = sorted({s.rescale_type for s in other if s.rescale_type})
        raise _fail("not-hu", f"Rescale Type {', '.join(kinds)}, not HU: {_names(other)}",
                    other)


def _dedupe(slices: list[_Slice], notes: list[str]) -> list[_Slice]:
    """The same SOP Instance (and frame) given twice at the same position is used once."""
    seen: dict[tuple[str, int | None], _Slice] = {}
    kept = []
    for s in slices:
        key = (s.sop_uid, s.frame)
        first = seen.get(key)
        if first is None:
            seen[key] = s
            kept.append(s)
            continue
        if np.max(np.abs(first.position - s.position)) > DUPLICATE_TOL_MM:  # type: ignore
            raise _fail("duplicate-instance", f"{first.label} and {s.label} carry the same SOP "
                        "Instance UID at different positions", [first, s])
        notes.append(f"{s.label} is the same instance as {first.label}; used once")
    return kept


def _check_tilt(slices: list[_Slice], normal: np.ndarray) -> None:
    p0 = slices[0].position
    offsets = []
    for s in slices[1:]:
        d = s.position - p0  # type: ignore[operator]
        offsets.append(float(np.linalg.norm(d - np.dot(d, normal) * normal)))
    header = [s.tilt_deg for s in slices if s.tilt_deg is not None]
    header_tilt = max(header, key=abs) if header else 0.0
    if offsets and max(offsets) > TILT_OFFSET_TOL_MM:
        d = slices[-1].position - p0  # type: ignore[operator]
        along = float(np.dot(d, normal))
        angle = math.degrees(math.atan2(offsets[-1], abs(along)))
        worst = int(np.argmax(offsets)) + 1
        said = f"; Gantry/Detector Tilt {_fmt(header_tilt)} deg" if header else ""
        raise _fail("gantry-tilt", f"gantry tilt of {angle:.2f} deg: the slice positions move "
                    f"{_fmt(offsets[-1])} mm in-plane over {_fmt(abs(along))} mm along the normal "
                    f"(up to {_fmt(offsets[worst - 1])} mm at {slices[worst].label}), so the "
                    f"slices are sheared, not stacked{said}", slices)
    if abs(header_tilt) > TILT_TOL_DEG:
        tilted = [s for s in slices if s.tilt_deg is not None and abs(s.tilt_deg) > TILT_TOL_DEG]
        raise _fail("gantry-tilt", f"gantry tilt of {header_tilt:.2f} deg (Gantry/Detector "
                    f"Tilt) in {_names(tilted)}", slices)


def _check_spacing(slices: list[_Slice]) -> float:
    """The slice spacing (mean step) of sorted slices, after the gap and regularity checks."""
    along = np.array([s.along for s in slices])
    steps = np.diff(along)
    ref = float(np.sort(steps)[(steps.size - 1) // 2])  # lower median
    tol = max(SPACING_TOL_REL * ref, SPACING_TOL_MM)
    gaps = np.flatnonzero(steps > GAP_FACTOR * ref)
    if gaps.size:
        parts = []
        for i in gaps[:_LISTED]:
            missing = max(int(round(steps[i] / ref)) - 1, 1)
            parts.append(f"{_fmt(steps[i])} mm between {_fmt(along[i])} and "
                         f"{_fmt(along[i + 1])} mm ({slices[i].label} and "
                         f"{slices[i + 1].label}; about {missing} slice(s) missing)")
        more = f" and {gaps.size - _LISTED} more" if gaps.size > _LISTED else ""
        raise _fail("gap", f"{gaps.size} gap(s) in the slice positions, where the usual step "
                    f"is {_fmt(ref)} mm: " + "; ".join(parts) + more, slices)
    spacing = float((along[-1] - along[0]) / (along.size - 1))
    off = np.flatnonzero(np.abs(steps - ref) > tol)
    drift = np.abs(along - (along[0] + spacing * np.arange(along.size)))
    if off.size or float(drift.max()) > tol:
        i = int(off[0]) if off.size else int(np.argmax(drift)) - 1
        i = min(max(i, 0), steps.size - 1)
        raise _fail("varying-spacing", f"the slice spacing varies from {_fmt(steps.min())} to "
                    f"{_fmt(steps.max())} mm (tolerance {_fmt(tol)} mm around {_fmt(ref)} mm; "
                    f"positions drift up to {_fmt(float(drift.max()))} mm from even spacing), "
                    f"e.g. {_fmt(steps[i])} mm between {slices[i].label} and "
                    f"{slices[i + 1].label}", slices)
    return spacing


# --------------------------------------------------------------------------- assembly


def _sorted_checked(slices: list[_Slice]) -> tuple[list[_Slice], float, np.ndarray, list[str]]:
    """Check a group of slice headers as one volume; return them sorted along the normal with
    the slice spacing, the direction matrix and notes. Raises VolumeError."""
    notes: list[str] = []
    if not slices:
        raise VolumeError("too-few-slices", "no CT slices to assemble")
    _check_kinds(slices)
    _check_geometry(slices)
    row, col, normal = _unit_axes(slices[0].orientation)  # type: ignore[misc, arg-type]
    for s in slices:
        s.along = float(np.dot(normal, s.position))  # type: ignore[arg-type]
    _check_acquisitions(slices, notes)
    _check_sizes(slices)
    _check_rescale(slices)
    slices = _dedupe(slices, notes)
    slices = sorted(slices, key=lambda s: s.along)
    steps = np.diff([s.along for s in slices])
    dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if dup.size:
        pairs = [f"{slices[i].label} and {slices[i + 1].label} at {_fmt(slices[i].along)} mm"
                 for i in dup[:_LISTED]]
        more = f" and {dup.size - _LISTED} more" if dup.size > _LISTED else ""
        distinct = np.unique(np.round([s.along for s in slices], 2))
        also = ""
        if distinct.size > 2:
            rest = np.diff(distinct)
            if float(rest.max() - rest.min()) > max(SPACING_TOL_REL * float(rest.min()),
                                                     SPACING_TOL_MM):
                also = (f"; the {distinct.size} distinct positions are also unevenly spaced, "
                        f"steps {_fmt(float(rest.min()))} to {_fmt(float(rest.max()))} mm")
        raise _fail("duplicate-position", f"{dup.size} duplicated slice position(s) along the "
                    "normal: " + "; ".join(pairs) + more + also,
                    [s for i in dup for s in (slices[i], slices[i + 1])])
    _check_tilt(slices, normal)
    if len(slices) == 1:
        s = slices[0]
        if s.spacing_between and s.spacing_between > 0:
            spacing, src = s.spacing_between, "Spacing Between Slices"
        elif s.thickness and s.thickness > 0:
            spacing, src = s.thickness, "Slice Thickness"
        else:
            raise _fail("no-geometry", f"a single slice ({s.label}) without Spacing Between "
                        "Slices or Slice Thickness has no slice spacing", slices)
        notes.append(f"a single slice; slice spacing {_fmt(spacing)} mm from its {src}")
    else:
        spacing = _check_spacing(slices)
        header = {round(s.spacing_between, 3) for s in slices if s.spacing_between}
        if header and all(abs(h - spacing) > max(SPACING_TOL_REL * spacing, SPACING_TOL_MM)
                          for h in header):
            notes.append(f"Spacing Between Slices {', '.join(_fmt(h) for h in sorted(header))} "
                         f"mm in the header; {_fmt(spacing)} mm between slice positions is used")
    thick = {s.thickness for s in slices if s.thickness is not None}
    if len(thick) > 1:
        notes.append(f"Slice Thickness varies ({', '.join(_fmt(t) for t in sorted(thick))} mm)")
    if len({(s.slope, s.intercept) for s in slices}) > 1:
        notes.append("Rescale Slope / Intercept differ between slices (applied per slice)")
    direction = np.stack([row, col, normal], axis=1)
    return slices, float(spacing), direction, notes


def _read_pixels(slices: list[_Slice]) -> np.ndarray:
    """HU = stored value x Rescale Slope + Rescale Intercept per slice (C.11.1.1.2), float32,
    (slices, rows, columns), read one slice or frame at a time."""
    from pydicom.pixels import iter_pixels, pixel_array

    rows, cols = int(slices[0].rows), int(slices[0].columns)  # type: ignore[arg-type]
    hu = np.empty((len(slices), rows, cols), dtype=np.float32)
    by_path: dict[Path, list[tuple[int, _Slice]]] = {}
    for k, s in enumerate(slices):
        by_path.setdefault(s.path, []).append((k, s))

    def put(k: int, s: _Slice, arr: np.ndarray) -> None:
        if arr.shape != (rows, cols):
            raise _fail("unreadable", f"{s.label}: pixel data of shape {arr.shape}, header "
                        f"says {rows} x {cols}", [s])
        hu[k] = arr.astype(np.float64) * float(s.slope) + float(s.intercept)  # type: ignore

    for path, members in by_path.items():
        try:
            if members[0][1].frame is None:
                for k, s in members:
                    put(k, s, np.asarray(pixel_array(path)))
            else:
                members = sorted(members, key=lambda m: m[1].frame)  # type: ignore
                indices = [int(s.frame) - 1 for _, s in members]  # type: ignore[arg-type]
                frames = iter_pixels(path, indices=indices)
                for (k, s), arr in zip(members, frames, strict=True):
                    put(k, s, np.asarray(arr))
        except VolumeError:
            raise
        except Exception as exc:  # decoders raise many kinds; all mean "cannot read pixels"
            raise _fail("unreadable", f"{members[0][1].label}: the pixel data cannot be decoded "
                        f"({type(exc).__name__}: {exc})", [m[1] for m in members]) from exc
    return hu


def _build(slices: list[_Slice], series_uid: str | None = None) -> Volume:
    ordered, spacing, direction, notes = _sorted_checked(slices)
    hu = _read_pixels(ordered)
    first = ordered[0]
    multi = any(s.frame is not None for s in ordered)
    row_spacing, column_spacing = first.pixel_spacing  # type: ignore[misc]
    return Volume(
        hu=hu,
        spacing=(spacing, float(row_spacing), float(column_spacing)),
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type, union-attr]
        direction=direction,
        slice_uids=tuple(s.sop_uid for s in ordered),
        series_uid=series_uid or first.series_uid,
        frames=tuple(s.frame or 1 for s in ordered) if multi else (),
        slice_thickness=first.thickness,
        notes=notes,
        frame_of_reference_uid=first.frame_of_reference)


def _headers(items: list[tuple[Path, str | None]], errors: list[VolumeError] | None
             ) -> list[_Slice]:
    out: list[_Slice] = []
    for path, uid in items:
        try:
            out.extend(_read_header(path, uid))
        except VolumeError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return out


def assemble(paths: Sequence[Path | str] | Sequence[tuple[Path | str, str]], *,
             series_uid: str | None = None) -> Volume:
    """One CT volume from the files of one series, or ``VolumeError``.

    ``paths`` are file paths, or (path, SOP Instance UID) pairs as a caller that indexed the
    files knows them (the file's own SOP Instance UID wins; the given one names a file that
    lacks it). With ``series_uid`` only the files of that series are used (others are left out,
    with a note); without it all files must belong to one series ("several-series").
    A file that cannot be read refuses the whole volume ("unreadable").

    ``slice_uids`` follow the sorted slices; ``frames`` is empty for single-frame instances and,
    once any slice comes from a multi-frame instance, holds every slice's frame number (1 for a
    single-frame instance). ``notes`` record what was accepted but worth knowing (a header
    Spacing Between Slices that disagrees with the positions, per-slice rescale, an instance
    given twice, adjacent acquisitions joined, a single slice's spacing source)."""
    slices = _headers(_items(paths), None)
    notes: list[str] = []
    if series_uid is not None:
        kept = [s for s in slices if s.series_uid == series_uid]
        if len(kept) < len(slices):
            others = {s.path for s in slices} - {s.path for s in kept}
            notes.append(f"{len(others)} file(s) of other series left out")
        slices = kept
        if not slices:
            raise VolumeError("too-few-slices", f"no file of series {series_uid} among the "
                              f"{len(paths)} given", series_uid=series_uid)
    else:
        series = list(dict.fromkeys(s.series_uid for s in slices))
        if len(series) > 1:
            raise _fail("several-series", f"the files belong to {len(series)} series; pass "
                        "series_uid or use assemble_all", slices)
    volume = _build(slices, series_uid)
    volume.notes[:0] = notes
    return volume


def _split_slices(slices: list[_Slice]) -> list[list[_Slice]]:
    """Group slice headers into candidate volumes: by series, Frame of Reference, orientation,
    Enhanced CT stack, temporal position, and, where their positions overlap, acquisition."""
    groups: list[list[_Slice]] = []
    for series in _by(slices, "series_uid").values():
        for frame in _by(series, "frame_of_reference").values():
            with_geometry = [s for s in frame if s.orientation is not None
                             and _unit_axes(s.orientation) is not None]
            rest = [s for s in frame if s not in with_geometry]
            if rest:
                groups.append(rest)  # refused as no-geometry on assembly
            for oriented in _orientation_groups(with_geometry):
                _, _, normal = _unit_axes(oriented[0].orientation)  # type: ignore
                for s in oriented:
                    s.along = (float(np.dot(normal, s.position)) if s.position is not None
                               else 0.0)
                for stack in _by(oriented, "stack").values():
                    for temporal in _by(stack, "temporal").values():
                        acquisitions = _by(temporal, "acquisition")
                        if len(acquisitions) > 1 and _overlapping(acquisitions):
                            groups.extend(acquisitions.values())
                        else:
                            groups.append(temporal)
    return groups


def assemble_all(paths: Sequence[Path | str] | Sequence[tuple[Path | str, str]]
                 ) -> tuple[list[Volume], list[VolumeError]]:
    """Every volume in the given files, and what could not be assembled.

    Files are grouped by series, Frame of Reference, orientation (an axial and a sagittal
    reformat in one series are two volumes), Enhanced CT Stack ID, temporal position, and
    Acquisition Number where acquisitions cover overlapping positions (acquisitions of adjacent
    ranges stay one volume). Each group is assembled and checked on its own, as by ``assemble``.
    Unreadable files, non-CT instances and localizers are reported; a group that is still not
    one volume (a gap, duplicated positions, tilt, ...) is reported with its reason. Volumes come
    in first-seen order of their series, then orientation, then stack / time / acquisition."""
    errors: list[VolumeError] = []
    slices = _headers(_items(paths), errors)
    not_ct = [s for s in slices if not _is_ct(s)]
    scouts = [s for s in slices if _is_ct(s) and _is_localizer(s)]
    for bad in (not_ct, scouts):
        if bad:
            try:
                _check_kinds(bad)
            except VolumeError as exc:
                errors.append(exc)
    slices = [s for s in slices if _is_ct(s) and not _is_localizer(s)]
    volumes: list[Volume] = []
    for group in _split_slices(slices):
        try:
            volumes.append(_build(group))
        except VolumeError as exc:
            errors.append(exc)
    return volumes, errors
