"""The ``ecg-measure`` engine: rule-based ECG measurement and interpretation.

It has no learned weights: every number is computed from the waveform and every statement follows
a published criterion (``models.ecg.criteria``), so its results count as trained. It reads the
first ECG file of the study (a DICOM waveform instance or a WFDB record), measures it, interprets
it and returns measurements, findings, warnings and short text sections.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from models.base import ContractError, EngineResult, ModelInfo, ModelSpec, StudyInput
from models.ecg.errors import EcgInputError
from models.ecg.interpret import interpret
from models.ecg.leads import STANDARD_LEADS
from models.ecg.measure import EcgAnalysis, analyse
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
        raw.update(file=str(path), not_analysed_leads=extra,
                   other_waveform_groups=[g.label for g in record.groups],
                   patient=dict(record.patient),
                   # a plain summary for the CLI and logs; the composer writes report text
                   summary=_text(analysis, interp.findings))
        return EngineResult(
            model=ModelInfo(FAMILY, self.version, None), trained=True,
            findings=interp.findings, measurements=analysis.measurements,
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
