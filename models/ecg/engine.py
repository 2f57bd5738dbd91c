"""The ``ecg-measure`` engine: rule-based ECG measurement and interpretation.

It has no learned weights: every number is computed from the waveform and every statement follows
a published criterion (``models.ecg.criteria``), so its results count as trained. It reads the
first ECG file of the study (a DICOM waveform instance or a WFDB record), measures it, interprets
it and returns measurements, findings, warnings and short text sections.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

from models.base import (
    Code,
    ContractError,
    EngineResult,
    Measurement,
    ModelInfo,
    ModelSpec,
    StudyInput,
    Where,
)
from models.ecg.cart import CartMeasurements
from models.ecg.errors import EcgInputError
from models.ecg.interpret import interpret
from models.ecg.leads import STANDARD_LEADS
from models.ecg.measure import LOINC, EcgAnalysis, analyse
from models.ecg.signal import EcgRecord, is_ecg_file, read_ecg, select_leads

FAMILY = "ecg-measure"
VERSION = "1.0.0"


def first_ecg_path(study: StudyInput) -> Path:
    """The first path of the study that is an ECG (DICOM waveform or WFDB record)."""
    for p in study.paths:
        if is_ecg_file(p):
            return Path(p)
    names = ", ".join(Path(p).name for p in study.paths[:5])
    raise EcgInputError(f"no ECG waveform among the study's files ({names})")


def patient_from_metadata(study: StudyInput) -> dict[str, Any]:
    """Sex and age from the study's DICOM metadata (first instance that has them)."""
    out: dict[str, Any] = {}
    for md in study.metadata:
        sex = str(md.get("PatientSex", "") or "").upper()
        if sex in ("M", "F") and "sex" not in out:
            out["sex"] = sex
        m = re.fullmatch(r"(\d{3})Y", str(md.get("PatientAge", "") or ""))
        if m and "age_years" not in out:
            out["age_years"] = float(m.group(1))
    return out


class EcgMeasureEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("measure", "classify", "report")
    domains: ClassVar[tuple[str, ...]] = ("ecg",)

    def __init__(self, spec: ModelSpec) -> None:
        if spec.family != FAMILY:
            raise ContractError(f"spec is for {spec.family!r}, not {FAMILY!r}")
        if spec.variant == "checkpoint":
            raise ContractError(f"{FAMILY} is rule-based and has no checkpoint variant")
        self.spec = spec
        self.version = spec.version or VERSION

    def run(self, study: StudyInput) -> EngineResult:
        path = first_ecg_path(study)
        record = read_ecg(path)
        for k, val in patient_from_metadata(study).items():
            record.patient.setdefault(k, val)
        analysed, extra = _standard_part(record)
        analysis = analyse(analysed)
        interp = interpret(analysis)
        warnings = list(analysis.warnings) + list(interp.warnings)
        if extra:
            warnings.append(f"leads {', '.join(extra)} are not standard 12-lead leads and were "
                            "not analysed")
        raw = analysis.raw()
        summary = _text(analysis, interp.findings)
        measurements = list(analysis.measurements)
        if record.cart is not None and not record.cart.empty:
            measurements += cart_measurements(record.cart, analysis.values,
                                              record.instance_uid)
            line = cart_line(record.cart, analysis.values)
            if line:
                summary["measurements"] = "\n".join(
                    t for t in (summary.get("measurements"), line) if t)
        raw.update(file=str(path), not_analysed_leads=extra,
                   other_waveform_groups=[g.label for g in record.groups],
                   patient=dict(record.patient),
                   # the acquiring device's own values, statements and fiducials, as read;
                   # its statements stay here and never become MedGate findings
                   cart=({"source": "acquiring device", **record.cart.to_dict()}
                         if record.cart is not None else None),
                   # a plain summary for the CLI and logs; the composer writes report text
                   summary=summary)
        return EngineResult(
            model=ModelInfo(FAMILY, self.version, None), trained=True,
            findings=interp.findings, measurements=measurements,
            warnings=warnings, raw=raw)


def _standard_part(record: EcgRecord) -> tuple[EcgRecord, list[str]]:
    std = [n for n in record.leads if n in STANDARD_LEADS]
    extra = [n for n in record.leads if n not in STANDARD_LEADS]
    if not std or not extra:
        return record, []
    return select_leads(record, std), extra


def _text(a: EcgAnalysis, findings: list[Any]) -> dict[str, str]:
    r = a.record
    leads = ", ".join(r.leads)
    resampled = (f" (recorded at {r.original_fs:g} Hz)"
                 if r.original_fs and abs(r.original_fs - r.fs) > 1e-6 else "")
    derived = f" Derived leads: {', '.join(r.derived_leads)}." if r.derived_leads else ""
    poor = [q.lead for q in a.quality if not q.adequate]
    quality = (f"Signal quality inadequate in {', '.join(poor)}." if poor
               else "Signal quality adequate in all leads.")
    text = {"technique": f"{len(r.leads)}-lead ECG, {r.duration_s:.1f} s at {r.fs:g} Hz"
                         f"{resampled}; leads {leads}.{derived} {quality}"}
    v = a.values
    parts = []
    if "heart_rate" in v:
        parts.append(f"Ventricular rate {v['heart_rate']:.0f} bpm")
    for key, label in (("pr_interval", "PR"), ("qrs_duration", "QRS"), ("qt_interval", "QT")):
        if key in v:
            parts.append(f"{label} {v[key]:.0f} ms")
    if "qtc_bazett" in v:
        parts.append(f"QTc {v['qtc_bazett']:.0f} ms (Bazett), {v['qtc_fridericia']:.0f} ms "
                     "(Fridericia)")
    axes = [f"{k[0].upper()} {v[k + '_axis']:.0f}" for k in ("p", "qrs", "t")
            if k + "_axis" in v]
    if axes:
        parts.append("axes " + ", ".join(axes).replace("Q ", "QRS ") + " deg")
    if parts:
        text["measurements"] = "; ".join(parts) + "."
    present = [f.label for f in findings if f.state == "present"]
    uncertain = [f.label for f in findings if f.state == "uncertain"]
    if present or uncertain:
        lines = present + [f"possible: {x}" for x in uncertain]
        text["interpretation"] = "; ".join(lines) + "."
    return text


# ------------------------------------------------------------------------------------------------
# The acquiring device's measurements beside MedGate's

# cart name -> MedGate's value it is compared with (QTc: by the formula the cart's code names)
_COMPARED = {"rr_interval": "rr_interval", "heart_rate": "heart_rate",
             "pr_interval": "pr_interval", "qrs_duration": "qrs_duration",
             "qt_interval": "qt_interval", "p_axis": "p_axis", "qrs_axis": "qrs_axis",
             "t_axis": "t_axis"}
_QTC_BY_FORMULA = {"Bazett": "qtc_bazett", "Fridericia": "qtc_fridericia"}


def _cart_name(name: str, formula: str | None) -> str:
    if name == "qtc" and formula in _QTC_BY_FORMULA:
        return _QTC_BY_FORMULA[formula]  # qtc_bazett / qtc_fridericia
    return name


def _difference(ours: float, cart: float, unit: str) -> float:
    d = ours - cart
    if unit == "deg":  # axes: the shorter way round, in (-180, 180]
        d = (d + 180.0) % 360.0 - 180.0
        d = 180.0 if d == -180.0 else d
    return d


def cart_measurements(cart: CartMeasurements, values: dict[str, float],
                      instance_uid: str | None) -> list[Measurement]:
    """``cart_<name>`` for each value the acquiring device stored (same unit as MedGate's), and
    ``<name>_cart_difference`` = MedGate - device where MedGate measured the same quantity.

    A QTc whose code names no correction is ``cart_qtc`` and gets no difference: comparing it
    with MedGate's Bazett or Fridericia value would assume the device's formula."""
    where = Where(instance_uid=instance_uid)
    out: list[Measurement] = []
    seen: set[str] = set()
    for m in cart.measurements:
        name = _cart_name(m.name, m.formula)
        if name in seen:  # a second value for the same quantity: cart.notes says which is used
            continue
        seen.add(name)
        # LOINC concept as MedGate's own value; the meaning says whose number it is (the
        # device's own code, SCP-ECG or MDC, is in raw["cart"]: not a scheme results may carry)
        loinc = LOINC.get(name) or (LOINC["qtc_bazett"] if m.name == "qtc" else None)
        code = (Code.parse(loinc, f"{m.code.meaning or name} (acquiring device)")
                if loinc else None)
        out.append(Measurement(f"cart_{name}", round(m.value, 3), m.unit, code, where))
        ours_key = _COMPARED.get(name) or (name if name in _QTC_BY_FORMULA.values() else None)
        ours = values.get(ours_key) if ours_key else None
        if ours is not None and math.isfinite(ours):
            out.append(Measurement(f"{name}_cart_difference",
                                   round(_difference(ours, m.value, m.unit), 3), m.unit, None,
                                   where))
    return out


def cart_line(cart: CartMeasurements, values: dict[str, float]) -> str:
    """One line for the measurement text: what the acquiring device measured, with MedGate's
    value and the difference (MedGate - device)."""
    parts: list[str] = []

    def one(label: str, name: str, ours_key: str | None) -> None:
        m = next((x for x in cart.measurements if _cart_name(x.name, x.formula) == name), None)
        if m is None:
            return
        unit = "bpm" if m.unit == "/min" else m.unit
        ours = values.get(ours_key) if ours_key else None
        if ours is None:
            parts.append(f"{label} {m.value:.0f} {unit}")
        else:
            d = _difference(ours, m.value, m.unit)
            parts.append(f"{label} {m.value:.0f} {unit} (MedGate {ours:.0f} {unit}, {d:+.0f})")

    one("rate", "heart_rate", "heart_rate")
    one("RR", "rr_interval", "rr_interval")
    one("PR", "pr_interval", "pr_interval")
    one("QRS", "qrs_duration", "qrs_duration")
    one("QT", "qt_interval", "qt_interval")
    one("QTc (Bazett)", "qtc_bazett", "qtc_bazett")
    one("QTc (Fridericia)", "qtc_fridericia", "qtc_fridericia")
    qtc = next((x for x in cart.measurements if _cart_name(x.name, x.formula) == "qtc"), None)
    if qtc is not None:
        ours = [f"{label} {values[k]:.0f} ms" for label, k in
                (("Bazett", "qtc_bazett"), ("Fridericia", "qtc_fridericia")) if k in values]
        parts.append(f"QTc {qtc.value:.0f} ms (correction not stated"
                     + (f"; MedGate {', '.join(ours)})" if ours else ")"))
    axes = [(k, next((x for x in cart.measurements if x.name == f"{k}_axis"), None))
            for k in ("p", "qrs", "t")]
    axes = [(k, m) for k, m in axes if m is not None]
    if axes:
        labels = "/".join(k.upper() for k, _ in axes)
        dev = "/".join(f"{m.value:.0f}" for _, m in axes)
        text = f"axes {labels} {dev} deg"
        if all(f"{k}_axis" in values for k, _ in axes):
            ours = "/".join(f"{values[f'{k}_axis']:.0f}" for k, _ in axes)
            diffs = "/".join(f"{_difference(values[f'{k}_axis'], m.value, 'deg'):+.0f}"
                             for k, m in axes)
            text += f" (MedGate {ours}, {diffs})"
        parts.append(text)
    if not parts:
        return ""
    return "Acquiring device measured: " + "; ".join(parts) + "."
