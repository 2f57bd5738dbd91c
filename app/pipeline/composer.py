"""The composer: turns engine results into a draft report whose every sentence carries evidence.

Sections are technique, findings and impression, in that order. A sentence is built only with at
least one piece of evidence (a measurement, a finding of a trained engine, a region, a cited
knowledge entry, or an acquisition fact read from the headers); ``Sentence`` refuses to exist
without one. Results of untrained engines (``trained=False``) are listed in ``Draft.excluded`` and
never reach the text.

This module must never read files, touch the database, or state a finding no engine reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.base import EngineResult, Finding, Measurement, Region

SECTIONS = ("technique", "findings", "impression")
EVIDENCE_KINDS = ("measurement", "finding", "region", "knowledge", "acquisition")
TECHNICAL_FAMILY = "technical"

KnowledgeLookup = Callable[[str], "dict[str, Any] | None"]

# Summary measurements stated together in one findings sentence, in this order, with the words a
# report uses for them. Several spellings map to one entry; per-lead values are not summaries.
KEY_MEASUREMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Heart rate", ("heart_rate", "hr", "ventricular_rate")),
    ("Atrial rate", ("atrial_rate",)),
    ("RR interval", ("rr_interval", "rr")),
    ("PR interval", ("pr_interval", "pr")),
    ("QRS duration", ("qrs_duration", "qrs")),
    ("QT interval", ("qt_interval", "qt")),
    ("QTc", ("qtc_interval", "qtc")),
    ("QTc (Bazett)", ("qtc_bazett",)),
    ("QTc (Fridericia)", ("qtc_fridericia",)),
    ("P axis", ("p_axis",)),
    ("QRS axis", ("qrs_axis", "axis")),
    ("T axis", ("t_axis",)),
)
_KEY_INDEX = {alias: i for i, (_, aliases) in enumerate(KEY_MEASUREMENTS) for alias in aliases}
_UNIT_WORDS = {"/min": "/min", "bpm": "/min", "{beats}/min": "/min", "1/min": "/min",
               "deg": "degrees", "°": "degrees", "um": "micrometres", "{pixels}": "pixels"}
_NORMAL_CODES = {"norm", "normal", "normal_ecg", "no_finding", "nofinding", "no finding"}
_NORMAL_LABEL = re.compile(r"^\s*(normal (ecg|study|examination|radiograph|chest|ct|slide)\b|"
                           r"within normal limits|unremarkable|"
                           r"no (acute |significant )?(abnormalit|finding|disease))", re.IGNORECASE)


class DraftError(ValueError):
    """A draft, sentence or piece of evidence that breaks the composer's rules."""


@dataclass(frozen=True)
class Evidence:
    """What a sentence rests on. ``model`` is ``family@version``; ``detail`` holds the value and
    unit of a measurement, the label of a finding, the box of a region or the title of a
    knowledge entry."""

    kind: str
    ref: str
    model: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVIDENCE_KINDS:
            raise DraftError(f"evidence kind must be one of {EVIDENCE_KINDS}, not {self.kind!r}")
        if not isinstance(self.ref, str) or not self.ref:
            raise DraftError("evidence needs a reference (measurement id, finding code, ...)")
        if not isinstance(self.model, str) or "@" not in self.model:
            raise DraftError(f"evidence model must be 'family@version', not {self.model!r}")
        object.__setattr__(self, "detail", dict(self.detail))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "model": self.model,
                "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        return cls(kind=data.get("kind", ""), ref=data.get("ref", ""),
                   model=data.get("model", ""), detail=data.get("detail") or {})


@dataclass(frozen=True)
class Sentence:
    """One sentence of a draft with the evidence behind it; it cannot be built without any."""

    text: str
    evidence: tuple[Evidence, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise DraftError("a sentence needs text")
        evidence = tuple(self.evidence or ())
        if not evidence:
            raise DraftError(f"sentence {self.text!r} has no evidence; drafts state only what is "
                             "grounded")
        if not all(isinstance(e, Evidence) for e in evidence):
            raise DraftError("sentence evidence must be Evidence objects")
        object.__setattr__(self, "text", self.text.strip())
        object.__setattr__(self, "evidence", evidence)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "evidence": [e.to_dict() for e in self.evidence]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sentence:
        return cls(text=data.get("text", ""),
                   evidence=tuple(Evidence.from_dict(e) for e in data.get("evidence") or ()))


@dataclass
class Draft:
    """A draft report: sections of evidenced sentences, plus what was left out and why."""

    sections: dict[str, list[Sentence]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise DraftError(f"unknown draft section(s) {unknown}; sections are {SECTIONS}")
        for name, sentences in self.sections.items():
            if not all(isinstance(s, Sentence) for s in sentences):
                raise DraftError(f"section {name!r} must hold Sentence objects")
        self.sections = {name: list(self.sections.get(name, [])) for name in SECTIONS}

    def to_dict(self) -> dict[str, Any]:
        return {"sections": {k: [s.to_dict() for s in v] for k, v in self.sections.items()},
                "warnings": list(self.warnings), "excluded": list(self.excluded),
                "notes": list(self.notes), "models": list(self.models)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Draft:
        sections = {k: [Sentence.from_dict(s) for s in v]
                    for k, v in (data.get("sections") or {}).items()}
        return cls(sections=sections, warnings=list(data.get("warnings") or []),
                   excluded=list(data.get("excluded") or []), notes=list(data.get("notes") or []),
                   models=list(data.get("models") or []))

    def text(self) -> str:
        """The plain text of the sections that have sentences."""
        parts = []
        for name in SECTIONS:
            sentences = self.sections[name]
            if not sentences:
                continue
            if name == "impression" and len(sentences) > 1:
                body = "\n".join(f"{i}. {s.text}" for i, s in enumerate(sentences, start=1))
            else:
                body = " ".join(s.text for s in sentences)
            parts.append(f"{name.upper()}\n{body}")
        return "\n\n".join(parts)

    def is_empty(self) -> bool:
        return not any(self.sections.values())


# ---------------------------------------------------------------------------- wording helpers

def format_value(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _unit(unit: str) -> str:
    return _UNIT_WORDS.get(unit, unit)


def _quantity(m: Measurement) -> str:
    unit = _unit(m.unit)
    if unit == "1":
        return format_value(m.value)
    sep = "" if unit.startswith("/") else " "
    return f"{format_value(m.value)}{sep}{unit}"


def _phrase(m: Measurement) -> str:
    name = m.name.replace("_", " ")
    lead = f" in lead {m.where.lead}" if m.where.lead else ""
    return f"{name}{lead} {_quantity(m)}"


def _capital(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _sentence_end(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def is_global_normal(finding: Finding) -> bool:
    """True for a whole-study negative statement such as "Normal ECG" or "No finding"."""
    code = finding.code.strip().lower()
    return code in _NORMAL_CODES or bool(_NORMAL_LABEL.match(finding.label))


def is_normal_statement(finding: Finding) -> bool:
    """True for a normal or descriptive statement: one its engine marks ``abnormal=False``
    (sinus rhythm, normal axis), or a whole-study negative statement."""
    if finding.abnormal is not None:
        return not finding.abnormal
    return is_global_normal(finding)


def _tag(result: EngineResult) -> str:
    return f"{result.model.family}@{result.model.version}"


def _measurement_evidence(m: Measurement, model: str) -> Evidence:
    return Evidence("measurement", m.id, model,
                    {"name": m.name, "value": m.value, "unit": m.unit, "code": m.code,
                     "where": m.where.to_dict()})


def _region_evidence(r: Region, model: str) -> Evidence:
    return Evidence("region", r.id, model, r.to_dict())


# ---------------------------------------------------------------------------- composing

@dataclass
class _Grouped:
    """Present findings with one code, as reported by one or more engines."""

    finding: Finding
    evidence: list[Evidence]
    measurements: list[Measurement]
    order: int


def compose(results: Iterable[EngineResult], knowledge: KnowledgeLookup | None = None) -> Draft:
    """Compose a draft from engine results (see the module docstring for the rules).

    ``knowledge(id)`` returns the knowledge entry (with a ``title``) or None; ids it cannot
    resolve are dropped from the evidence and noted. Without it, cited ids are kept unresolved.
    """
    draft = Draft()
    trained: list[EngineResult] = []
    for result in results:
        if not isinstance(result, EngineResult):
            raise DraftError(f"compose takes EngineResult objects, not {type(result).__name__}")
        if result.trained:
            trained.append(result)
            draft.models.append(_tag(result))
            draft.warnings.extend(f"{_tag(result)}: {w}" for w in result.warnings)
        else:
            draft.excluded.append(_tag(result))

    for result in trained:
        if result.model.family == TECHNICAL_FAMILY:
            draft.sections["technique"].extend(_technique(result))

    key = _key_measurements(trained)
    if key is not None:
        draft.sections["findings"].append(key)
    grouped = _present_findings(trained, knowledge, draft.notes)
    for g in grouped:
        draft.sections["findings"].append(Sentence(_finding_text(g), tuple(g.evidence)))
    draft.sections["impression"] = _impression(grouped, draft.warnings)
    return draft


def _technique(result: EngineResult) -> list[Sentence]:
    tag = _tag(result)
    by_id = {m.id: m for m in result.measurements}
    facts = result.raw.get("facts") if isinstance(result.raw, Mapping) else None
    sentences: list[Sentence] = []
    if isinstance(facts, list) and facts:
        for fact in facts:
            if not isinstance(fact, Mapping) or not str(fact.get("text") or "").strip():
                continue
            evidence = [_measurement_evidence(by_id[i], tag)
                        for i in fact.get("measurements") or () if i in by_id]
            for key, value in (fact.get("acquisition") or {}).items():
                if value not in (None, "", [], ()):
                    evidence.append(Evidence("acquisition", f"acq:{key}", tag, {"value": value}))
            if evidence:
                sentences.append(Sentence(str(fact["text"]), tuple(evidence)))
        return sentences
    for m in result.measurements:  # no fact list: one plain sentence per measurement
        sentences.append(Sentence(_sentence_end(_capital(_phrase(m))),
                                  (_measurement_evidence(m, tag),)))
    return sentences


def _key_measurements(results: list[EngineResult]) -> Sentence | None:
    chosen: dict[int, tuple[Measurement, str]] = {}
    for result in results:
        if result.model.family == TECHNICAL_FAMILY:
            continue
        for m in result.measurements:
            index = _KEY_INDEX.get(m.name.lower())
            if index is not None and m.where.lead is None and index not in chosen:
                chosen[index] = (m, _tag(result))
    if not chosen:
        return None
    parts = [f"{KEY_MEASUREMENTS[i][0]} {_quantity(chosen[i][0])}" for i in sorted(chosen)]
    evidence = tuple(_measurement_evidence(m, tag) for m, tag in
                     (chosen[i] for i in sorted(chosen)))
    return Sentence(_sentence_end("; ".join(parts)), evidence)


def _present_findings(results: list[EngineResult], knowledge: KnowledgeLookup | None,
                      notes: list[str]) -> list[_Grouped]:
    groups: dict[str, _Grouped] = {}
    for result in results:
        tag = _tag(result)
        measurements = {m.id: m for m in result.measurements}
        regions = {r.id: r for r in result.regions}
        for f in result.findings:
            if f.state != "present":
                continue
            key = f.code.strip().lower()
            if key not in groups:
                groups[key] = _Grouped(f, [], [], len(groups))
            g = groups[key]
            g.evidence.append(Evidence("finding", f.code, tag,
                                       {"label": f.label, "state": f.state, "score": f.score,
                                        "criteria": f.criteria, "where": f.where.to_dict()}))
            for ref in f.evidence:
                if ref in measurements:
                    g.evidence.append(_measurement_evidence(measurements[ref], tag))
                    g.measurements.append(measurements[ref])
                elif ref in regions:
                    g.evidence.append(_region_evidence(regions[ref], tag))
            for kid in f.knowledge:
                ev = _knowledge_evidence(kid, tag, knowledge)
                if ev is None:
                    notes.append(f"{tag}: knowledge entry {kid!r} cited by {f.code!r} was not "
                                 "found and is not cited")
                elif all(e.ref != kid or e.kind != "knowledge" for e in g.evidence):
                    g.evidence.append(ev)
    return list(groups.values())


def _knowledge_evidence(kid: str, tag: str, knowledge: KnowledgeLookup | None) -> Evidence | None:
    if knowledge is None:
        return Evidence("knowledge", kid, tag, {"resolved": False})
    try:
        entry = knowledge(kid)
    except LookupError:
        entry = None
    if not entry:
        return None
    detail = {"resolved": True, "title": str(entry.get("title") or kid)}
    for key in ("domain", "codes", "source", "sources"):
        if entry.get(key):
            detail[key] = entry[key]
    return Evidence("knowledge", kid, tag, detail)


def _finding_text(g: _Grouped) -> str:
    text = _capital(g.finding.label).rstrip(".")
    seen: set[str] = set()
    phrases = []
    for m in g.measurements:
        if m.id not in seen:
            seen.add(m.id)
            phrases.append(_phrase(m))
    if phrases:
        text += f" ({'; '.join(phrases)})"
    return _sentence_end(text)


def _impression(grouped: list[_Grouped], warnings: list[str]) -> list[Sentence]:
    abnormal = [g for g in grouped if not is_normal_statement(g.finding)]
    normal = [g for g in grouped if is_normal_statement(g.finding)]
    global_normal = [g for g in normal if is_global_normal(g.finding)]
    if abnormal and global_normal:
        warnings.append("conflicting statements: "
                        + ", ".join(g.finding.label for g in global_normal)
                        + " reported alongside " + ", ".join(g.finding.label for g in abnormal)
                        + "; the impression lists the abnormal findings")

    def rank(g: _Grouped) -> tuple[float, int]:
        scores = [e.detail.get("score") for e in g.evidence if e.kind == "finding"]
        known = [s for s in scores if isinstance(s, (int, float))]
        # a rule-based finding (no score) is a measured fact and ranks with the most certain
        return (-(max(known) if known and len(known) == len(scores) else 1.0), g.order)

    chosen = sorted(abnormal, key=rank) if abnormal else normal
    return [Sentence(_sentence_end(_capital(g.finding.label).rstrip(".")), tuple(g.evidence))
            for g in chosen]
