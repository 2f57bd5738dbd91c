"""The built-in "technical" engine: what was acquired, read from DICOM headers and WFDB headers.

It reports facts (slice counts and spacing, ECG leads and sampling, slide size and resolution) and
technical problems (missing or duplicated slices, mixed orientations, flat or missing ECG leads). It
has no learned weights, so its results count as trained: every number is read or computed from the
files, never inferred.

It must never read pixel data (only ECG waveform samples, to find flat leads), never diagnose, and
never import ``app``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from models.base import (
    DOMAINS,
    ContractError,
    EngineResult,
    Measurement,
    ModelInfo,
    ModelSpec,
    StudyInput,
    Where,
    register,
)
from models.phrasing import format_number

FAMILY = "technical"
VERSION = "1.0.0"

# PS3.4 B.5: waveform and whole-slide storage SOP classes.
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG = "1.2.840.10008.5.1.4.1.1.9.1.3"
ECG_SOP_CLASSES = (TWELVE_LEAD_ECG, GENERAL_ECG, AMBULATORY_ECG)
VL_WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"

VOLUME_MODALITIES = ("CT", "MR", "PT")
PROJECTION_MODALITIES = ("CR", "DX")
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Engineering tolerances (not clinical thresholds):
GAP_FACTOR = 1.5  # a step between slices above 1.5x the median step means slices are missing
SAME_POSITION_MM = 0.01  # slice positions closer than this along the normal are the same slice
SPACING_TOLERANCE_MM = 0.05  # spacing jitter below max(0.05 mm, 5 % of the median) is ignored
SPACING_TOLERANCE_REL = 0.05
ORIENTATION_TOLERANCE = 1e-3  # direction cosines differing by more than this are another plane
FLAT_LEAD_MV = 0.02  # peak-to-peak below 20 uV is at the noise floor of an ECG cart: no signal


@dataclass
class _Collector:
    """Measurements, technique sentences (facts), warnings and raw details of one run."""

    measurements: list[Measurement] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def measure(self, name: str, value: float, unit: str, scope: str | None = None,
                where: Where | None = None) -> str:
        base = f"m:{name}:{scope}" if scope else f"m:{name}"
        taken = {m.id for m in self.measurements}
        mid, n = base, 2
        while mid in taken:
            mid, n = f"{base}:{n}", n + 1
        self.measurements.append(Measurement(name=name, value=float(value), unit=unit,
                                             where=where or Where(), id=mid))
        return mid

    def fact(self, text: str, measurements: tuple[str, ...] | list[str] = (),
             acquisition: dict[str, Any] | None = None) -> None:
        self.facts.append({"text": text, "measurements": list(measurements),
                           "acquisition": acquisition or {}})


# ---------------------------------------------------------------------------- reading headers

def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _sop_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "unknown SOP class")


def _code_meaning(seq: Any) -> str:
    if seq:
        item = seq[0]
        return str(item.get("CodeMeaning") or item.get("CodeValue") or "").strip()
    return ""


def read_wfdb_header(path: str | Path) -> dict[str, Any]:
    """Read a WFDB ``.hea`` record header: record name, lead names, sampling frequency, length.

    Uses ``wfdb.rdheader`` when wfdb is installed, otherwise parses the header text
    (PhysioNet "header(5)" format: record line, one line per signal, ``#`` comments).
    Raises ``ValueError`` with the reason when the header cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such WFDB header")
    try:
        import wfdb
    except ImportError:
        return _parse_wfdb_header(path)
    try:
        header = wfdb.rdheader(str(path.with_suffix("")))
    except Exception as exc:  # wfdb raises several unrelated types on bad headers
        raise ValueError(f"{path.name}: unreadable WFDB header ({exc})") from exc
    names = list(getattr(header, "sig_name", None) or [])
    return {"record_name": header.record_name, "n_sig": int(header.n_sig or 0),
            "fs": _float(header.fs), "sig_len": int(header.sig_len or 0),
            "sig_name": names, "units": list(getattr(header, "units", None) or []),
            "comments": list(header.comments or []), "reader": "wfdb"}


def _parse_wfdb_header(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read ({exc.strerror})") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    comments = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise ValueError(f"{path.name}: empty WFDB header")
    rec = body[0].split()
    try:
        name, n_sig = rec[0], int(rec[1])
        fs = float(rec[2].split("/")[0].split("(")[0]) if len(rec) > 2 else 250.0
        sig_len = int(rec[3]) if len(rec) > 3 else 0
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{path.name}: malformed WFDB record line {body[0]!r}") from exc
    names: list[str] = []
    units: list[str] = []
    if "/" not in name:  # a multi-segment record lists segments, not signals
        for line in body[1:1 + n_sig]:
            parts = line.split()
            gain = parts[2] if len(parts) > 2 else ""
            units.append(gain.split("/", 1)[1] if "/" in gain else "mV")
            names.append(" ".join(parts[8:]) if len(parts) > 8 else "")
    return {"record_name": name.split("/")[0], "n_sig": n_sig, "fs": fs, "sig_len": sig_len,
            "sig_name": names, "units": units, "comments": comments, "reader": "header text"}


# ---------------------------------------------------------------------------- slice geometry

def _frame_planes(ds: Dataset) -> list[tuple[list[float] | None, list[float] | None]]:
    """(ImagePositionPatient, ImageOrientationPatient) for each frame of an image."""
    if "PerFrameFunctionalGroupsSequence" in ds:  # enhanced multi-frame (PS3.3 C.7.6.16)
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds \
            else Dataset()
        shared_iop = None
        if "PlaneOrientationSequence" in shared:
            shared_iop = _floats(shared.PlaneOrientationSequence[0].get("ImageOrientationPatient"))
        planes = []
        for frame in ds.PerFrameFunctionalGroupsSequence:
            ipp = None
            if "PlanePositionSequence" in frame:
                ipp = _floats(frame.PlanePositionSequence[0].get("ImagePositionPatient"))
            iop = shared_iop
            if "PlaneOrientationSequence" in frame:
                iop = _floats(frame.PlaneOrientationSequence[0].get("ImageOrientationPatient"))
            planes.append((ipp, iop))
        return planes
    return [(_floats(ds.get("ImagePositionPatient")), _floats(ds.get("ImageOrientationPatient")))]


def _plane_label(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def slice_geometry(planes: list[tuple[list[float], list[float]]]) -> dict[str, Any]:
    """Spacing, duplicates, gaps and orientation of slices given (position, orientation) pairs.

    Positions are projected on the slice normal (row cosine x column cosine) of the most common
    orientation; slices in another orientation are counted but left out of the spacing.
    """
    groups: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for ipp, iop in planes:
        o = np.asarray(iop, dtype=float)
        for ref, members in groups:
            if np.max(np.abs(ref - o)) <= ORIENTATION_TOLERANCE:
                members.append(np.asarray(ipp, dtype=float))
                break
        else:
            groups.append((o, [np.asarray(ipp, dtype=float)]))
    groups.sort(key=lambda g: len(g[1]), reverse=True)
    iop, positions = groups[0]
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        raise ValueError("ImageOrientationPatient has parallel row and column cosines")
    normal = normal / norm
    d = sorted(float(np.dot(p, normal)) for p in positions)
    steps = [b - a for a, b in zip(d, d[1:], strict=False)]
    duplicates = sorted({round(a, 3) for a, s in zip(d[:-1], steps, strict=True)
                         if s < SAME_POSITION_MM})
    real = [s for s in steps if s >= SAME_POSITION_MM]
    out: dict[str, Any] = {
        "plane": _plane_label(normal), "orientations": len(groups),
        "off_plane_slices": sum(len(m) for _, m in groups[1:]),
        "positions_mm": [round(x, 4) for x in d], "spacing_mm": None, "duplicates_mm": duplicates,
        "gaps": [], "inconsistent": False, "extent_mm": round(d[-1] - d[0], 4) if d else 0.0,
    }
    if not real:
        return out
    median = statistics.median(real)
    tol = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * median)
    out["spacing_mm"] = round(median, 4)
    out["spacing_range_mm"] = [round(min(real), 4), round(max(real), 4)]
    d_unique = [d[0]] + [b for b, s in zip(d[1:], steps, strict=True) if s >= SAME_POSITION_MM]
    for a, b in zip(d_unique, d_unique[1:], strict=False):
        if b - a > GAP_FACTOR * median:
            out["gaps"].append({"from_mm": round(a, 3), "to_mm": round(b, 3),
                                "gap_mm": round(b - a, 3),
                                "missing_estimate": max(1, round((b - a) / median) - 1)})
    out["inconsistent"] = any(abs(s - median) > tol for s in real if s <= GAP_FACTOR * median)
    return out


# ---------------------------------------------------------------------------- the engine

@dataclass
class _Instance:
    path: Path
    ds: Dataset

    @property
    def sop_class(self) -> str:
        return _text(self.ds, "SOPClassUID")

    @property
    def modality(self) -> str:
        return _text(self.ds, "Modality").upper()

    @property
    def kind(self) -> str:
        if self.sop_class in ECG_SOP_CLASSES or self.modality == "ECG" \
                or "WaveformSequence" in self.ds:
            return "waveform"
        if self.sop_class == VL_WHOLE_SLIDE or self.modality == "SM":
            return "slide"
        if self.modality in VOLUME_MODALITIES:
            return "volume"
        if self.modality in PROJECTION_MODALITIES:
            return "projection"
        return "other"


class TechnicalEngine:
    """Reports what was acquired; see the module docstring."""

    family = FAMILY
    tasks = ("measure",)
    domains = DOMAINS

    def __init__(self, spec: ModelSpec) -> None:
        if spec.family != FAMILY:
            raise ContractError(f"the technical engine cannot be built from a {spec.family!r} spec")
        self.spec = spec

    def run(self, study: StudyInput) -> EngineResult:
        out = _Collector()
        raw: dict[str, Any] = {"unreadable": [], "series": []}
        instances: list[_Instance] = []
        records: list[tuple[Path, dict[str, Any]]] = []
        for path in study.paths:
            try:
                if path.suffix.lower() == ".hea":
                    records.append((path, read_wfdb_header(path)))
                else:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                    instances.append(_Instance(path, ds))
            except (InvalidDicomError, ValueError, OSError, EOFError) as exc:
                reason = str(exc) or type(exc).__name__
                raw["unreadable"].append({"path": str(path), "reason": reason})
                out.warnings.append(f"{path.name} could not be read: {reason}")

        instances = _unique_instances(instances, out)
        if instances:
            self._study_facts(instances, out, raw)
        kinds = {i.kind for i in instances}
        series = _by_series(instances)
        counts = {k: sum(1 for s in series.values() if s[0].kind == k) for k in kinds}
        for key, members in series.items():
            kind = members[0].kind
            scope = _series_scope(members[0]) if counts[kind] > 1 else None
            entry = _series_entry(key, members)
            raw["series"].append(entry)
            if kind == "volume":
                entry["geometry"] = _volume(members, scope, out)
            elif kind == "projection":
                entry["views"] = _projection(members, scope, out)
            elif kind == "waveform":
                entry["ecg"] = [_waveform(i, scope, out) for i in members]
            elif kind == "slide":
                entry["slide"] = _slide(members, scope, out)
            else:
                n = len(members)
                out.fact(f"{_series_label(members[0])}: {n} {members[0].modality or 'other'} "
                         f"object{_s(n)} ({_sop_name(members[0].sop_class)}).", (),
                         {"modality": members[0].modality or None})
        for n, (path, header) in enumerate(records):
            raw.setdefault("wfdb", []).append(
                _wfdb(path, header, f"record{n + 1}" if len(records) > 1 else None, out))
        self._expectations(study.domain, kinds, bool(records), out)
        _comparison(study, out, raw)

        raw["facts"] = out.facts
        # a plain summary for the CLI and logs; the composer writes the technique section
        raw["summary"] = ({"technique": " ".join(f["text"] for f in out.facts)}
                          if out.facts else {})
        return EngineResult(
            model=ModelInfo(family=FAMILY, version=self.spec.version, sha256=None),
            trained=True, measurements=out.measurements, warnings=out.warnings, raw=raw)

    @staticmethod
    def _study_facts(instances: list[_Instance], out: _Collector, raw: dict[str, Any]) -> None:
        modalities = sorted({i.modality for i in instances if i.modality})
        sop_classes = sorted({i.sop_class for i in instances if i.sop_class})
        n_series = len({_text(i.ds, "SeriesInstanceUID") or str(i.path) for i in instances})
        raw.update(modalities=modalities,
                   sop_classes=[{"uid": u, "name": _sop_name(u)} for u in sop_classes])
        ids = [out.measure("instance_count", len(instances), "1"),
               out.measure("series_count", n_series, "1")]
        mods = ", ".join(modalities) or "no recorded modality"
        out.fact(f"The study holds {len(instances)} instance{_s(len(instances))} in {n_series} "
                 f"series ({mods}).", ids, {"modality": modalities})
        names = [_sop_name(u) for u in sop_classes]
        if names:
            out.fact(f"Object type{_s(len(names))}: {', '.join(names)}.", (),
                     {"sop_class_uid": sop_classes})
        parts = sorted({_text(i.ds, "BodyPartExamined").upper() for i in instances} - {""})
        if parts:
            out.fact(f"Body part examined: {', '.join(parts)}.", (), {"body_part": parts})

    @staticmethod
    def _expectations(domain: str, kinds: set[str], has_wfdb: bool, out: _Collector) -> None:
        expected = {"ct": "volume", "cxr": "projection", "ecg": "waveform", "pathology": "slide"}
        what = {"volume": "CT or MR image series", "projection": "CR or DX image",
                "waveform": "ECG waveform", "slide": "whole-slide image"}
        need = expected[domain]
        if need not in kinds and not (need == "waveform" and has_wfdb):
            out.warnings.append(f"The study was routed as {domain} but holds no {what[need]}.")


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _by_series(instances: list[_Instance]) -> dict[str, list[_Instance]]:
    series: dict[str, list[_Instance]] = {}
    for inst in instances:
        key = _text(inst.ds, "SeriesInstanceUID") or f"file:{inst.path}"
        series.setdefault(key, []).append(inst)
    return series


def _unique_instances(instances: list[_Instance], out: _Collector) -> list[_Instance]:
    """Keep one file per SOPInstanceUID, as the store would, and say which were dropped."""
    seen: dict[str, Path] = {}
    kept = []
    for inst in instances:
        uid = _text(inst.ds, "SOPInstanceUID")
        if uid and uid in seen:
            out.warnings.append(f"{inst.path.name} repeats SOPInstanceUID {uid} of "
                                f"{seen[uid].name}; it was counted once.")
            continue
        if uid:
            seen[uid] = inst.path
        kept.append(inst)
    return kept


def _series_scope(first: _Instance) -> str:
    number = _text(first.ds, "SeriesNumber")
    return f"series{number}" if number else f"series-{_text(first.ds, 'SeriesInstanceUID')[-8:]}"


def _series_label(first: _Instance) -> str:
    number = _text(first.ds, "SeriesNumber")
    desc = _text(first.ds, "SeriesDescription")
    label = f"Series {number}" if number else "A series without a number"
    return f"{label} ({desc})" if desc else label


def _series_entry(key: str, members: list[_Instance]) -> dict[str, Any]:
    first = members[0]
    return {"series_uid": _text(first.ds, "SeriesInstanceUID") or None,
            "number": _text(first.ds, "SeriesNumber") or None,
            "description": _text(first.ds, "SeriesDescription"),
            "modality": first.modality, "kind": first.kind, "instance_count": len(members),
            "sop_classes": sorted({i.sop_class for i in members})}


def _volume(members: list[_Instance], scope: str | None, out: _Collector) -> dict[str, Any]:
    first = members[0]
    label = _series_label(first)
    planes, missing_geometry = [], 0
    thicknesses, spacings, sizes = [], [], set()
    for inst in members:
        for ipp, iop in _frame_planes(inst.ds):
            if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
                missing_geometry += 1
            else:
                planes.append((ipp, iop))
        pm = inst.ds
        if "SharedFunctionalGroupsSequence" in inst.ds:
            shared = inst.ds.SharedFunctionalGroupsSequence[0]
            if "PixelMeasuresSequence" in shared:
                pm = shared.PixelMeasuresSequence[0]
        if (t := _float(pm.get("SliceThickness"))) is not None:
            thicknesses.append(t)
        if (ps := _floats(pm.get("PixelSpacing"))) and len(ps) == 2:
            spacings.append(tuple(ps))
        rows, cols = _float(inst.ds.get("Rows")), _float(inst.ds.get("Columns"))
        if rows and cols:
            sizes.add((int(rows), int(cols)))
    n_slices = len(planes) + missing_geometry
    geometry: dict[str, Any] = {"slice_count": n_slices}
    ids = [out.measure("slice_count", n_slices, "1", scope)]
    plane = ""
    if planes:
        geometry.update(slice_geometry(planes))
        plane = f"{geometry['plane']} " if geometry["plane"] != "oblique" else "oblique "
    matrix = ""
    if len(sizes) == 1:
        rows, cols = next(iter(sizes))
        ids += [out.measure("rows", rows, "{pixels}", scope),
                out.measure("columns", cols, "{pixels}", scope)]
        matrix = f" of {rows} x {cols} pixels"
    elif sizes:
        out.warnings.append(f"{label}: images have different matrix sizes {sorted(sizes)}.")
    out.fact(f"{label}: {n_slices} {plane}{first.modality} slice{_s(n_slices)}{matrix}.", ids,
             {"modality": first.modality})
    if thicknesses:
        t = statistics.median(thicknesses)
        out.fact(f"{label}: slice thickness {format_number(t)} mm.",
                 [out.measure("slice_thickness", t, "mm", scope)])
        if max(thicknesses) - min(thicknesses) > SPACING_TOLERANCE_MM:
            out.warnings.append(f"{label}: slice thickness varies from "
                                f"{format_number(min(thicknesses))} to "
                                f"{format_number(max(thicknesses))} mm.")
    if spacings:
        r, c = statistics.median(s[0] for s in spacings), statistics.median(s[1] for s in spacings)
        out.fact(f"{label}: in-plane pixel spacing {format_number(r)} x {format_number(c)} mm.",
                 [out.measure("pixel_spacing_row", r, "mm", scope),
                  out.measure("pixel_spacing_column", c, "mm", scope)])
    if geometry.get("spacing_mm") is not None:
        sp = geometry["spacing_mm"]
        out.fact(f"{label}: slices are {format_number(sp)} mm apart, computed from slice "
                 f"positions, covering {format_number(geometry['extent_mm'])} mm.",
                 [out.measure("slice_spacing", sp, "mm", scope),
                  out.measure("scan_extent", geometry["extent_mm"], "mm", scope)])
        header = _float(first.ds.get("SpacingBetweenSlices"))
        if header is not None and abs(header - sp) > max(SPACING_TOLERANCE_MM,
                                                         SPACING_TOLERANCE_REL * sp):
            out.warnings.append(f"{label}: SpacingBetweenSlices in the header "
                                f"({format_number(header)} mm) differs from the spacing of the "
                                f"slice positions ({format_number(sp)} mm).")
    elif n_slices == 1:
        out.fact(f"{label}: a single slice, so no spacing between slices.", ids[:1])
    _volume_warnings(label, geometry, missing_geometry, out)
    return geometry


def _volume_warnings(label: str, g: dict[str, Any], missing_geometry: int,
                     out: _Collector) -> None:
    if missing_geometry:
        out.warnings.append(f"{label}: {missing_geometry} slice(s) have no ImagePositionPatient or "
                            "ImageOrientationPatient; their position is unknown.")
    if g.get("orientations", 1) > 1:
        out.warnings.append(f"{label}: mixed orientations ({g['orientations']} image planes); "
                            f"{g['off_plane_slices']} slice(s) outside the main plane were left "
                            "out of the spacing.")
    if g.get("duplicates_mm"):
        where = ", ".join(format_number(x) for x in g["duplicates_mm"])
        out.warnings.append(f"{label}: duplicated slice position(s) at {where} mm along the "
                            "slice normal.")
    for gap in g.get("gaps", []):
        out.warnings.append(f"{label}: gap of {format_number(gap['gap_mm'])} mm between slices at "
                            f"{format_number(gap['from_mm'])} and {format_number(gap['to_mm'])} mm "
                            f"(more than {GAP_FACTOR}x the median spacing of "
                            f"{format_number(g['spacing_mm'])} mm); about "
                            f"{gap['missing_estimate']} slice(s) may be missing.")
    if g.get("inconsistent"):
        lo, hi = g["spacing_range_mm"]
        out.warnings.append(f"{label}: inconsistent slice spacing ({format_number(lo)} to "
                            f"{format_number(hi)} mm).")


def _projection(members: list[_Instance], scope: str | None, out: _Collector
                ) -> list[dict[str, Any]]:
    views = []
    many = len(members) > 1
    for n, inst in enumerate(sorted(members, key=lambda i: _float(i.ds.get("InstanceNumber"))
                                    or 0), start=1):
        ds = inst.ds
        view = _text(ds, "ViewPosition").upper() or _code_meaning(ds.get("ViewCodeSequence"))
        img_scope = "-".join(x for x in (scope, f"image{n}" if many else None) if x) or None
        label = f"Image {n}" if many else "The image"
        ids, parts = [], [inst.modality]
        rows, cols = _float(ds.get("Rows")), _float(ds.get("Columns"))
        if rows and cols:
            ids += [out.measure("rows", rows, "{pixels}", img_scope),
                    out.measure("columns", cols, "{pixels}", img_scope)]
            parts.append(f"{int(rows)} x {int(cols)} pixels")
        spacing = _floats(ds.get("PixelSpacing")) or _floats(ds.get("ImagerPixelSpacing"))
        if spacing and len(spacing) == 2:
            ids += [out.measure("pixel_spacing_row", spacing[0], "mm", img_scope),
                    out.measure("pixel_spacing_column", spacing[1], "mm", img_scope)]
            parts.append(f"pixel spacing {format_number(spacing[0])} x "
                         f"{format_number(spacing[1])} mm")
        view_text = f"{view} view" if view else "view not recorded"
        out.fact(f"{label}: {', '.join(parts)}, {view_text}.", ids,
                 {"view": view or None, "modality": inst.modality})
        if not view:
            out.warnings.append(f"{label} ({inst.path.name}) has no ViewPosition or view code; "
                                "the projection is unknown.")
        views.append({"path": str(inst.path), "view": view or None,
                      "instance_uid": _text(ds, "SOPInstanceUID") or None})
    return views


def _lead_name(meaning: str) -> str:
    name = meaning.split("(")[0].strip()
    name = name[5:].strip() if name.lower().startswith("lead ") else name
    for std in STANDARD_LEADS:
        if name.lower() == std.lower():
            return std
    return name


def _to_mv(unit: str) -> float:
    return {"uv": 1e-3, "mv": 1.0, "v": 1e3}.get(unit.lower(), 1e-3)


def _waveform(inst: _Instance, scope: str | None, out: _Collector) -> dict[str, Any]:
    try:
        ds = pydicom.dcmread(inst.path)  # the waveform samples are needed for flat leads
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        out.warnings.append(f"{inst.path.name}: waveform could not be read ({exc}).")
        return {"path": str(inst.path), "error": str(exc)}
    groups = list(ds.get("WaveformSequence") or [])
    if not groups:
        out.warnings.append(f"{inst.path.name}: ECG object without a WaveformSequence.")
        return {"path": str(inst.path), "groups": []}
    info: dict[str, Any] = {"path": str(inst.path), "sop_class": inst.sop_class, "groups": []}
    for g in groups:
        channels = list(g.get("ChannelDefinitionSequence") or [])
        info["groups"].append({
            "label": _text(g, "MultiplexGroupLabel"),
            "originality": _text(g, "WaveformOriginality"),
            "channels": int(g.get("NumberOfWaveformChannels") or 0),
            "samples": int(g.get("NumberOfWaveformSamples") or 0),
            "sampling_frequency_hz": _float(g.get("SamplingFrequency")),
            "leads": [_lead_name(_code_meaning(c.get("ChannelSourceSequence"))) for c in channels]})
    index = next((i for i, g in enumerate(info["groups"]) if g["originality"] == "ORIGINAL"), 0)
    main = info["groups"][index]
    info["primary_group"] = index
    leads, fs, samples = main["leads"], main["sampling_frequency_hz"], main["samples"]
    out.fact(f"The ECG holds {len(leads)} lead{_s(len(leads))}: {', '.join(leads)}.",
             [out.measure("ecg_lead_count", len(leads), "1", scope)], {"leads": leads})
    if fs:
        duration = samples / fs
        out.fact(f"Sampling frequency {format_number(fs)} Hz; recording duration "
                 f"{format_number(duration)} s.",
                 [out.measure("sampling_frequency", fs, "Hz", scope),
                  out.measure("ecg_duration", duration, "s", scope)])
    for g in info["groups"]:
        if g is not main and g["sampling_frequency_hz"]:
            out.fact(f"A {g['label'].lower() or 'further'} waveform group of "
                     f"{format_number(g['samples'] / g['sampling_frequency_hz'])} s is included.",
                     (), {"waveform_group": g["label"] or None})
    flat = _flat_leads(ds, index, leads, out, inst.path.name)
    info["flat_leads"] = flat
    if flat:
        out.warnings.append(f"Flat lead{_s(len(flat))} (peak-to-peak below "
                            f"{format_number(FLAT_LEAD_MV)} mV): {', '.join(flat)}.")
    missing = [x for x in STANDARD_LEADS if x not in leads]
    if inst.sop_class == TWELVE_LEAD_ECG and len(leads) < 12:
        info["missing_leads"] = missing
        out.warnings.append(f"A 12-lead ECG object holds only {len(leads)} leads; missing: "
                            f"{', '.join(missing) or 'unnamed leads'}.")
    return info


def _flat_leads(ds: Dataset, index: int, leads: list[str], out: _Collector, name: str
                ) -> list[str]:
    try:
        samples = np.asarray(ds.waveform_array(index), dtype=float)
    except Exception as exc:  # pydicom raises several types on malformed waveform data
        out.warnings.append(f"{name}: waveform samples could not be decoded ({exc}).")
        return []
    channels = list(ds.WaveformSequence[index].get("ChannelDefinitionSequence") or [])
    flat = []
    for k in range(min(samples.shape[1], len(channels))):
        units = channels[k].get("ChannelSensitivityUnitsSequence")
        unit_code = str(units[0].get("CodeValue") or "uV") if units else "uV"  # UCUM code
        column = samples[:, k]
        ptp = float(np.ptp(column[np.isfinite(column)])) if np.isfinite(column).any() else 0.0
        if ptp * _to_mv(unit_code) < FLAT_LEAD_MV:
            flat.append(leads[k] if k < len(leads) and leads[k] else f"channel {k + 1}")
    return flat


def _wfdb(path: Path, header: dict[str, Any], scope: str | None, out: _Collector
          ) -> dict[str, Any]:
    names = [n for n in header["sig_name"] if n]
    n_sig, fs, length = header["n_sig"], header["fs"], header["sig_len"]
    shown = [_lead_name(n) for n in names]
    text = f"The WFDB record {header['record_name']} holds {n_sig} signal{_s(n_sig)}"
    out.fact(text + (f": {', '.join(shown)}." if shown else "."),
             [out.measure("ecg_lead_count", n_sig, "1", scope)], {"leads": shown})
    if fs:
        ids = [out.measure("sampling_frequency", fs, "Hz", scope)]
        sentence = f"Sampling frequency {format_number(fs)} Hz"
        if length:
            ids.append(out.measure("ecg_duration", length / fs, "s", scope))
            sentence += f"; recording duration {format_number(length / fs)} s"
        out.fact(sentence + ".", ids)
    return {"path": str(path), **header}


def _slide(members: list[_Instance], scope: str | None, out: _Collector) -> dict[str, Any]:
    def area(i: _Instance) -> float:
        return (_float(i.ds.get("TotalPixelMatrixColumns")) or _float(i.ds.get("Columns")) or 0) \
            * (_float(i.ds.get("TotalPixelMatrixRows")) or _float(i.ds.get("Rows")) or 0)

    volume = [i for i in members if "VOLUME" in [str(v).upper() for v in i.ds.get("ImageType", [])]]
    base = max(volume or members, key=area)
    ds = base.ds
    pre = f"{_series_label(base)}. " if scope else ""
    width = _float(ds.get("TotalPixelMatrixColumns")) or _float(ds.get("Columns"))
    height = _float(ds.get("TotalPixelMatrixRows")) or _float(ds.get("Rows"))
    spacing = None
    if "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            spacing = _floats(shared.PixelMeasuresSequence[0].get("PixelSpacing"))
    spacing = spacing or _floats(ds.get("PixelSpacing"))
    info: dict[str, Any] = {"base_path": str(base.path), "width_px": width, "height_px": height,
                            "levels": len({area(i) for i in (volume or members)}),
                            "pixel_spacing_mm": spacing}
    if width and height:
        out.fact(f"{pre}Whole-slide image of {int(width)} x {int(height)} pixels at the base "
                 "level.",
                 [out.measure("slide_width_px", width, "{pixels}", scope),
                  out.measure("slide_height_px", height, "{pixels}", scope)])
    w_mm, h_mm = _float(ds.get("ImagedVolumeWidth")), _float(ds.get("ImagedVolumeHeight"))
    if (w_mm is None or h_mm is None) and spacing and width and height:
        w_mm, h_mm = width * spacing[1], height * spacing[0]
    if w_mm and h_mm:
        info.update(width_mm=w_mm, height_mm=h_mm)
        out.fact(f"{pre}Imaged area {format_number(w_mm)} x {format_number(h_mm)} mm.",
                 [out.measure("slide_width_mm", w_mm, "mm", scope),
                  out.measure("slide_height_mm", h_mm, "mm", scope)])
    if spacing and len(spacing) == 2:
        mpp = spacing[1] * 1000.0
        info["microns_per_pixel"] = mpp
        out.fact(f"{pre}Resolution {format_number(mpp)} micrometres per pixel.",
                 [out.measure("microns_per_pixel", mpp, "um", scope)])
    frames = _float(ds.get("NumberOfFrames"))
    if frames:
        tile = f" of {int(ds.Rows)} x {int(ds.Columns)} pixels" if "Rows" in ds else ""
        out.fact(f"{pre}The base level is stored as {int(frames)} frame{_s(int(frames))}{tile}; "
                 f"{info['levels']} resolution level{_s(info['levels'])}.",
                 [out.measure("frame_count", frames, "1", scope),
                  out.measure("pyramid_level_count", info["levels"], "1", scope)])
    paths = []
    for op in ds.get("OpticalPathSequence") or []:
        parts = [_code_meaning(op.get("IlluminationTypeCodeSequence")),
                 _code_meaning(op.get("IlluminationColorCodeSequence")),
                 _text(op, "OpticalPathDescription")]
        paths.append(", ".join(p for p in parts if p) or _text(op, "OpticalPathIdentifier"))
    info["optical_paths"] = paths
    if paths:
        out.fact(f"{pre}{len(paths)} optical path{_s(len(paths))}: {'; '.join(paths)}.",
                 [out.measure("optical_path_count", len(paths), "1", scope)],
                 {"optical_path": paths})
    return info


def _date(value: Any) -> str:
    """A DA value (YYYYMMDD) as ISO 8601, or "" when it is not a date."""
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return ""


def _comparison(study: StudyInput, out: _Collector, raw: dict[str, Any]) -> None:
    """The prior study the platform found (same patient, same domain), stated as the comparison
    of the technique section, with its date from its own headers."""
    prior = study.prior
    if prior is None:  # said, so that a reader knows no comparison was made
        out.fact("Comparison: none (no earlier study of this patient in this domain was "
                 "found).", (), {"prior_study": "none found"})
        raw["prior"] = None
        return
    meta = prior.metadata[0] if prior.metadata else {}
    date = _date(meta.get("StudyDate"))
    what = str(meta.get("StudyDescription") or "").strip()
    text = (f"Comparison: prior study{f' ({what})' if what else ''} of {date}." if date
            else f"Comparison: prior study{f' ({what})' if what else ''}, date not recorded.")
    out.fact(text, (), {"prior_study_uid": prior.study_uid, "prior_study_date": date or None})
    raw["prior"] = {"study_uid": prior.study_uid, "date": date or None,
                    "description": what or None}


@register(FAMILY)
def build_technical(spec: ModelSpec) -> TechnicalEngine:
    return TechnicalEngine(spec)
