"""What the acquiring ECG cart measured: its global measurements, its own interpretation text and
its median-beat fiducials, read from the Waveform Annotation Module (PS3.3 C.10.10).

``read_cart(ds)`` is a pure function of a pydicom Dataset and returns a frozen
``CartMeasurements``. It never raises on odd annotation content: anything it cannot read is left
out and said in ``notes``. Unknown concepts are kept in ``other`` with their code meaning, never
mapped to one of our names. It never logs: annotation text may name the patient.

These are the device's numbers and the device's statements. MedGate reports them beside its own
(``models/ecg/engine.py``) and never turns the cart's text into MedGate statements.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

# Our names, their dimension and the unit we report them in (UCUM).
NAMES: dict[str, tuple[str, str]] = {
    "rr_interval": ("time", "ms"), "pp_interval": ("time", "ms"),
    "heart_rate": ("rate", "/min"), "pr_interval": ("time", "ms"),
    "qrs_duration": ("time", "ms"), "qt_interval": ("time", "ms"), "qtc": ("time", "ms"),
    "p_axis": ("angle", "deg"), "qrs_axis": ("angle", "deg"), "t_axis": ("angle", "deg"),
}

# (scheme, code value) -> (our name, QTc formula named by the code). Only codes listed here are
# mapped; everything else is kept as "other".
_CONCEPTS: dict[tuple[str, str], tuple[str, str | None]] = {
    # SCP-ECG (EN 1064 / ISO 11073-91064) codes, scheme designator SCPECG (PS3.16 8: coding
    # schemes), as Mortara carts and the ECG Toolkit DICOM writer store them.
    ("SCPECG", "5.10.2.1-3"): ("rr_interval", None),
    ("SCPECG", "5.10.2.1-5"): ("pp_interval", None),
    ("SCPECG", "5.10.2.5-1"): ("heart_rate", None),  # "Vent Rate", unit /min
    ("SCPECG", "5.13.5-7"): ("pr_interval", None),
    ("SCPECG", "5.13.5-9"): ("qrs_duration", None),
    ("SCPECG", "5.13.5-11"): ("qt_interval", None),
    ("SCPECG", "5.10.2.5-5"): ("qtc", None),  # "QTc Interval": the formula is not said
    ("SCPECG", "5.10.3-11"): ("p_axis", None),
    ("SCPECG", "5.10.3-13"): ("qrs_axis", None),
    ("SCPECG", "5.10.3-15"): ("t_axis", None),
    # MDC (ISO/IEEE 11073-10101) global measurements as PS3.16 lists them: CID 3227 QTc
    # Measurement, CID 3228 ECG Timing Measurement, CID 3229 ECG Axis Measurement, CID 3689 ECG
    # Global Waveform Duration. Per-lead codes of those CIDs (and of CID 3687) are not global
    # values and stay "other".
    ("MDC", "2:16168"): ("rr_interval", None),  # RR interval global (CID 3228)
    ("MDC", "2:16000"): ("rr_interval", None),  # RR time period, global (CID 3689)
    ("MDC", "2:16140"): ("pp_interval", None),  # PP interval global (CID 3228, 3689)
    ("MDC", "2:15872"): ("pr_interval", None),  # PR interval global (CID 3228, 3689)
    ("MDC", "2:16156"): ("qrs_duration", None),  # QRS duration global (CID 3228, 3689)
    ("MDC", "2:16160"): ("qt_interval", None),  # QT interval global (CID 3228, 3689)
    ("MDC", "2:15876"): ("qtc", None),  # QTc interval global (CID 3227)
    ("MDC", "2:15880"): ("qtc", "Bazett"),  # QTc global using Bazett formula (CID 3227)
    ("MDC", "2:15892"): ("qtc", "Fridericia"),  # QTc global using Fredericia formula (CID 3227)
    ("MDC", "2:16128"): ("p_axis", None),  # P axis (CID 3229)
    ("MDC", "2:16132"): ("qrs_axis", None),  # QRS axis (CID 3229)
    ("MDC", "2:16136"): ("t_axis", None),  # T axis (CID 3229)
    # MDC_ECG_HEART_RATE, ISO/IEEE 11073-10101 partition 2 code 16770 (0x4182); PS3.16 has no
    # ECG-measurement CID with a heart-rate code, carts use this one.
    ("MDC", "2:16770"): ("heart_rate", None),
    # LOINC codes of the same concepts (the ones MedGate's own measurements carry).
    ("LN", "8867-4"): ("heart_rate", None), ("LN", "8625-6"): ("pr_interval", None),
    ("LN", "8633-0"): ("qrs_duration", None), ("LN", "8634-8"): ("qt_interval", None),
    ("LN", "8636-3"): ("qtc", None), ("LN", "8626-4"): ("p_axis", None),
    ("LN", "8632-2"): ("qrs_axis", None), ("LN", "8638-9"): ("t_axis", None),
}
# Some aECG-derived writers put the MDC reference id where the code value belongs.
_MDC_REFIDS: dict[str, tuple[str, str | None]] = {
    "MDC_ECG_HEART_RATE": ("heart_rate", None),
    "MDC_ECG_TIME_PD_RR": ("rr_interval", None), "MDC_ECG_TIME_PD_RR_GL": ("rr_interval", None),
    "MDC_ECG_TIME_PD_PP": ("pp_interval", None), "MDC_ECG_TIME_PD_PP_GL": ("pp_interval", None),
    "MDC_ECG_TIME_PD_PR": ("pr_interval", None), "MDC_ECG_TIME_PD_PR_GL": ("pr_interval", None),
    "MDC_ECG_TIME_PD_QRS": ("qrs_duration", None),
    "MDC_ECG_TIME_PD_QRS_GL": ("qrs_duration", None),
    "MDC_ECG_TIME_PD_QT": ("qt_interval", None), "MDC_ECG_TIME_PD_QT_GL": ("qt_interval", None),
    "MDC_ECG_TIME_PD_QTC": ("qtc", None), "MDC_ECG_TIME_PD_QTC_GL": ("qtc", None),
    "MDC_ECG_TIME_PD_QTCB": ("qtc", "Bazett"), "MDC_ECG_TIME_PD_QTCF": ("qtc", "Fridericia"),
    "MDC_ECG_ANGLE_P_FRONT": ("p_axis", None), "MDC_ECG_ANGLE_QRS_FRONT": ("qrs_axis", None),
    "MDC_ECG_ANGLE_T_FRONT": ("t_axis", None),
}
# DICOM's own scheme (DCM) has no ECG global measurement concepts in PS3.16; its ECG codes are
# the QTc algorithms of CID 3678 (122730 Bazett, 122731 Hodges, 122732 Fridericia, 122733
# Framingham), methods rather than measurements, so a DCM concept name stays "other".

# SCP-ECG fiducial codes (the Mortara / ECG Toolkit set) -> MedGate's fiducial names
# (``models.ecg.delineate.Fiducials``; "r" is the cart's QRS fiducial point).
FIDUCIALS: dict[tuple[str, str], str] = {
    ("SCPECG", "5.10.3-1"): "p_on", ("SCPECG", "5.10.3-2"): "p_off",
    ("SCPECG", "5.10.3-3"): "qrs_on", ("SCPECG", "5.7.1-3"): "r",
    ("SCPECG", "5.10.3-4"): "qrs_off", ("SCPECG", "5.10.3-5"): "t_end",
}

# Factor to our unit, by dimension, keyed by UCUM code (case-sensitive, PS3.16 CID 82 uses UCUM)
# and by a few spelled-out units seen in the wild.
_UNITS: dict[str, dict[str, float]] = {
    "time": {"ms": 1.0, "s": 1000.0, "us": 1e-3, "min": 60000.0,
             "milliseconds": 1.0, "millisecond": 1.0, "seconds": 1000.0, "second": 1000.0},
    "angle": {"deg": 1.0, "rad": 180.0 / math.pi, "degrees": 1.0, "degree": 1.0},
    "rate": {"/min": 1.0, "1/min": 1.0, "{beats}/min": 1.0, "{beat}/min": 1.0, "/s": 60.0,
             "bpm": 1.0, "beats per minute": 1.0, "heartbeat per minute": 1.0},
}
# SCP-ECG writes 29999 for "not calculated" (ECG Toolkit GlobalMeasurement.NoValue)
_NO_VALUE = 29999.0
# ECG Toolkit / Mortara: annotation groups from 100 hold per-beat fiducials on the rhythm strip.
PER_BEAT_GROUP_START = 100


@dataclass(frozen=True)
class CartCode:
    """The coded concept an annotation used, as stored (scheme, value, meaning)."""

    scheme: str
    value: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}


@dataclass(frozen=True)
class CartMeasurement:
    """One numeric annotation. For a known concept ``name`` is ours and ``value``/``unit`` are
    in our unit; for ``name == "other"`` they are the stored value and unit, unconverted."""

    name: str
    value: float
    unit: str
    code: CartCode
    stored_value: float
    stored_unit: str
    annotation_group: int | None = None
    formula: str | None = None  # QTc only: the correction the code names, None when unnamed

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "value": self.value, "unit": self.unit,
               "code": self.code.to_dict(), "stored_value": self.stored_value,
               "stored_unit": self.stored_unit, "annotation_group": self.annotation_group}
        if self.name == "qtc":
            out["formula"] = self.formula
        return out


@dataclass(frozen=True)
class CartFiducial:
    """One fiducial point: ``sample`` is the 0-based index into the referenced multiplex group
    (``position`` as stored is 1-based, PS3.3 C.10.10.1), ``ms`` its time from the group start."""

    name: str
    sample: int
    position: int
    ms: float
    code: CartCode


@dataclass(frozen=True)
class CartFiducials:
    """The cart's fiducials of its median (representative) beat and the group they lie on."""

    multiplex_group: int  # 1-based index into the Waveform Sequence (PS3.3 C.10.10.1.1)
    group_label: str
    fs: float
    n_samples: int
    annotation_group: int | None
    points: tuple[CartFiducial, ...]

    def get(self, name: str) -> CartFiducial | None:
        return next((p for p in self.points if p.name == name), None)

    def ms_from(self, name: str, origin: str = "qrs_on") -> float | None:
        """Time of ``name`` relative to ``origin`` (ms), None when either is missing."""
        a, b = self.get(name), self.get(origin)
        return None if a is None or b is None else a.ms - b.ms

    def to_dict(self) -> dict[str, Any]:
        return {"multiplex_group": self.multiplex_group, "group_label": self.group_label,
                "fs": self.fs, "n_samples": self.n_samples,
                "annotation_group": self.annotation_group,
                "samples": {p.name: p.sample for p in self.points},
                "ms": {p.name: round(p.ms, 3) for p in self.points}}


@dataclass(frozen=True)
class CartMeasurements:
    """Everything the cart stored that we read; empty when the file has no annotations."""

    measurements: tuple[CartMeasurement, ...] = ()
    other: tuple[CartMeasurement, ...] = ()
    statements: tuple[str, ...] = ()
    median_fiducials: CartFiducials | None = None
    device: str = ""  # Manufacturer and model (General Equipment Module), for attribution
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not (self.measurements or self.other or self.statements
                    or self.median_fiducials)

    def get(self, name: str) -> CartMeasurement | None:
        """The first measurement with our ``name`` (``"qtc"``: the first QTc, any formula)."""
        return next((m for m in self.measurements if m.name == name), None)

    def values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.measurements:
            out.setdefault(m.name, m.value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device,
                "measurements": [m.to_dict() for m in self.measurements],
                "other": [m.to_dict() for m in self.other],
                "statements": list(self.statements),
                "median_fiducials": (self.median_fiducials.to_dict()
                                     if self.median_fiducials else None),
                "notes": list(self.notes)}


# --------------------------------------------------------------------------------------------

# Tags read by number: Dataset.get by keyword costs a dictionary look-up and a conversion per
# call, and this runs inside read_ecg (a benchmarked path).
_T_UNITS = BaseTag(0x004008EA)  # Measurement Units Code Sequence
_T_CONCEPT = BaseTag(0x0040A043)  # Concept Name Code Sequence
_T_CHANNELS = BaseTag(0x0040A0B0)  # Referenced Waveform Channels
_T_RANGE = BaseTag(0x0040A130)  # Temporal Range Type
_T_POSITIONS = BaseTag(0x0040A132)  # Referenced Sample Positions
_T_GROUP = BaseTag(0x0040A180)  # Annotation Group Number
_T_NUMERIC = BaseTag(0x0040A30A)  # Numeric Value
_T_TEXT = BaseTag(0x00700006)  # Unformatted Text Value
_T_CODE_VALUE, _T_SCHEME, _T_MEANING = (BaseTag(0x00080100), BaseTag(0x00080102),
                                        BaseTag(0x00080104))
_T_LONG_CODE_VALUE = BaseTag(0x00080119)  # PS3.3 8.8: code values over 16 characters


@dataclass
class _Group:
    label: str
    fs: float
    n_samples: int


def read_cart(ds: Dataset) -> CartMeasurements:
    """The cart's measurements, statements and median-beat fiducials of a DICOM ECG dataset."""
    items = ds.get("WaveformAnnotationSequence") or []
    device = " ".join(str(ds.get(k, "") or "").strip()
                      for k in ("Manufacturer", "ManufacturerModelName")).strip()
    if not items:
        return CartMeasurements(device=device)
    groups = _groups(ds)
    notes: list[str] = []
    measured: list[CartMeasurement] = []
    other: list[CartMeasurement] = []
    statements: list[str] = []
    # fiducial points by (annotation group, referenced multiplex group)
    points: dict[tuple[int | None, int | None], list[tuple[str, int, CartCode]]] = {}
    unknown_points = 0
    per_beat = 0
    median_number = next((i + 1 for i, g in enumerate(groups) if "MEDIAN" in g.label.upper()),
                         None)
    for k, item in enumerate(items):
        try:
            ag = _uints(item, _T_GROUP)
            agroup = ag[0] if ag else None
            # PS3.3 C.10.10.1.1: pairs of (multiplex group, channel); channel 0 = all channels
            chans = _uints(item, _T_CHANNELS)
            mgroup = chans[0] if len(chans) >= 2 else None
            if agroup is not None and agroup >= PER_BEAT_GROUP_START and mgroup != median_number:
                # per-beat fiducials on the rhythm strip (most of a Mortara sequence): counted
                # only; skipping them before any conversion keeps read_ecg fast
                per_beat += 1
                continue
            if _T_TEXT in item:
                text = item[_T_TEXT].value
                if text not in (None, ""):
                    statements.append(str(text).strip())
                continue
            code = _code(item.get(_T_CONCEPT))
            if code is None:
                notes.append(f"annotation {k + 1}: no concept name, text or value; left out")
                continue
            if _T_RANGE in item:
                name = FIDUCIALS.get((code.scheme.upper(), code.value))
                if name is None:
                    unknown_points += 1
                    continue
                pos = _uints(item, _T_POSITIONS, "UL")
                if not pos:
                    notes.append(f"annotation {k + 1} ({code.meaning}): a point without "
                                 "Referenced Sample Positions; left out")
                    continue
                points.setdefault((agroup, mgroup), []).append((name, pos[0], code))
                continue
            num = item.get(_T_NUMERIC)
            if num is None or num.value in (None, ""):
                notes.append(f"annotation {k + 1} ({code.meaning}): no Numeric Value; left out")
                continue
            value = float(num.value[0] if num.VM > 1 else num.value)
            unit = _code(item.get(_T_UNITS))
            m = _measurement(code, value, unit, agroup, notes)
            if m is not None:
                (other if m.name == "other" else measured).append(m)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            # a malformed annotation must not stop the ECG being read; the type says what broke
            notes.append(f"annotation {k + 1} could not be read ({type(exc).__name__}); left out")
    if unknown_points:
        notes.append(f"{unknown_points} fiducial points with codes other than the SCP-ECG "
                     "P/QRS/T boundaries were not read")
    if per_beat:
        notes.append(f"{per_beat} per-beat annotations (annotation groups from "
                     f"{PER_BEAT_GROUP_START}) on the rhythm strip were not read")
    median = _median_fiducials(points, groups, notes)
    for name in {m.name for m in measured}:
        same = [m for m in measured if m.name == name]
        formulas = {m.formula for m in same}
        if len(same) > 1 and len(formulas) == len(same):
            continue  # e.g. QTc by Bazett and by Fridericia: both kept
        if len(same) > 1:
            notes.append(f"{len(same)} values for {name}; the first ({same[0].value:g} "
                         f"{same[0].unit}) is used")
    return CartMeasurements(tuple(measured), tuple(other), tuple(statements), median, device,
                            tuple(notes))


def _groups(ds: Dataset) -> list[_Group]:
    out = []
    for item in ds.get("WaveformSequence") or []:
        try:
            out.append(_Group(str(item.get("MultiplexGroupLabel", "") or ""),
                              float(item.get("SamplingFrequency") or 0.0),
                              int(item.get("NumberOfWaveformSamples") or 0)))
        except (TypeError, ValueError):
            out.append(_Group("", 0.0, 0))
    return out


def _uints(item: Dataset, tag: BaseTag, vr: str = "US") -> tuple[int, ...]:
    """Values of a US or UL element (Annotation Group Number, Referenced Waveform Channels,
    Referenced Sample Positions), decoded from the raw bytes while pydicom has not converted
    the element yet: converting every element of a long annotation sequence would cost more
    than the rest of the file's read."""
    elem = item.get_item(tag)
    if elem is None:
        return ()
    if (isinstance(elem, RawDataElement) and elem.VR in (vr, None) and not elem.is_buffered
            and isinstance(elem.value, bytes)):
        size = 2 if vr == "US" else 4
        n = len(elem.value) // size
        fmt = f"{'<' if elem.is_little_endian else '>'}{n}{'H' if size == 2 else 'I'}"
        return struct.unpack(fmt, elem.value[:size * n])
    value = item[tag].value
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return tuple(int(v) for v in value)
    return (int(value),)


def _code(seq_elem: Any) -> CartCode | None:
    if seq_elem is None or not seq_elem.value:
        return None
    item = seq_elem.value[0]
    vals = []
    for tag in (_T_SCHEME, _T_CODE_VALUE, _T_MEANING):
        e = item.get(tag)
        vals.append(str(e.value).strip() if e is not None and e.value is not None else "")
    scheme, value, meaning = vals
    if not value:
        long_value = item.get(_T_LONG_CODE_VALUE)  # e.g. an MDC reference id as the value
        value = str(long_value.value).strip() if long_value is not None else ""
    if not value and not meaning:
        return None
    return CartCode(scheme, value, meaning)


def _concept(code: CartCode) -> tuple[str, str | None] | None:
    hit = _CONCEPTS.get((code.scheme.upper(), code.value))
    if hit is None and code.value.upper().startswith("MDC_"):
        hit = _MDC_REFIDS.get(code.value.upper())
    return hit


def _measurement(code: CartCode, value: float, unit: CartCode | None, agroup: int | None,
                 notes: list[str]) -> CartMeasurement | None:
    stored_unit = unit.value if unit else ""
    concept = _concept(code)
    if concept is None:
        return CartMeasurement("other", value, stored_unit or "1", code, value, stored_unit,
                               agroup)
    name, formula = concept
    dim, ours = NAMES[name]
    factor = _factor(dim, unit)
    if factor is None:
        notes.append(f"{code.meaning or name} {value:g} with units {stored_unit or 'missing'!r}"
                     f" ({unit.meaning if unit else 'no Measurement Units Code Sequence'}) "
                     f"is not a {dim} in units we convert; left out")
        return None
    if not math.isfinite(value) or value == _NO_VALUE:
        notes.append(f"{code.meaning or name}: {value:g} is the SCP-ECG 'no value' marker; "
                     "left out")
        return None
    if dim != "angle" and value <= 0:
        # an interval or rate of zero is what carts write when they did not measure it
        notes.append(f"{code.meaning or name} {value:g} {stored_unit}: not a measured value; "
                     "left out")
        return None
    return CartMeasurement(name, value * factor, ours, code, value, stored_unit, agroup, formula)


def _factor(dim: str, unit: CartCode | None) -> float | None:
    if unit is None:
        return None
    table = _UNITS[dim]
    if unit.value in table:
        return table[unit.value]
    if any(unit.value in t for t in _UNITS.values()):
        return None  # a known unit of another dimension: the code wins over its meaning
    return table.get(unit.meaning.strip().lower())


def _median_fiducials(points: dict[tuple[int | None, int | None], list[tuple[str, int, CartCode]]],
                      groups: list[_Group], notes: list[str]) -> CartFiducials | None:
    """The median-beat fiducial set.

    A set that references a group labelled MEDIAN is it. Otherwise the Mortara / ECG Toolkit
    layout: every annotation references multiplex group 1 (the rhythm strip), the reference
    beat's fiducials form the one set with an annotation group number below 100 and the
    per-beat ones the groups from 100; the set is then read on the median group when the file
    has one and every position fits in it, and a note says so.
    """
    if not points:
        return None
    median_idx = next((i for i, g in enumerate(groups) if "MEDIAN" in g.label.upper()), None)
    chosen: tuple[int | None, int | None] | None = None
    group_idx: int | None = None
    for key in points:
        mg = key[1]
        if mg is not None and median_idx is not None and mg - 1 == median_idx:
            chosen, group_idx = key, median_idx
            break
    if chosen is None and median_idx is not None:
        reference = [key for key in points
                     if key[0] is not None and key[0] < PER_BEAT_GROUP_START]
        if len(reference) == 1:
            key = reference[0]
            n = groups[median_idx].n_samples
            if all(1 <= pos <= n for _, pos, _ in points[key]):
                chosen, group_idx = key, median_idx
                notes.append(f"median-beat fiducials read from annotation group {key[0]}, which "
                             f"references multiplex group {key[1]} "
                             f"({_label(groups, key[1])}); read on the "
                             f"{groups[median_idx].label} group as Mortara / SCP-ECG exports "
                             "lay them out (their positions fit it)")
    if chosen is None or group_idx is None:
        notes.append("no fiducial set could be placed on a median-beat group; left out")
        return None
    g = groups[group_idx]
    if g.fs <= 0:
        notes.append(f"multiplex group {group_idx + 1} has no sampling frequency; median-beat "
                     "fiducials left out")
        return None
    out: list[CartFiducial] = []
    seen: set[str] = set()
    for name, pos, code in points[chosen]:
        if not 1 <= pos <= g.n_samples:
            notes.append(f"{code.meaning or name} at sample {pos} lies outside the "
                         f"{g.n_samples} samples of {g.label or 'its group'}; left out")
            continue
        if name in seen:
            notes.append(f"a second {code.meaning or name} in the median-beat set; left out")
            continue
        seen.add(name)
        sample = pos - 1  # PS3.3 C.10.10.1: "Position of first sample is 1"
        out.append(CartFiducial(name, sample, pos, sample * 1000.0 / g.fs, code))
    return CartFiducials(group_idx + 1, g.label, g.fs, g.n_samples, chosen[0], tuple(out))


def _label(groups: list[_Group], number: int | None) -> str:
    if number is None or not 1 <= number <= len(groups):
        return "no such group"
    return groups[number - 1].label or "unlabelled"
