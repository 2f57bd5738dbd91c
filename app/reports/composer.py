"""The composer: turns engine results into a draft report whose every sentence carries evidence.

Sections are technique, findings and impression, in that order. A sentence is built only with at
least one piece of evidence (a measurement, a finding of a trained engine, a region, a cited
knowledge entry, or an acquisition fact read from the headers); ``Sentence`` refuses to exist
without one. Results of untrained engines (``trained=False``) are listed in ``Draft.excluded`` and
never reach the text.

The composer knows no domain: the words for a family's measurements come from the phrasing
table that family registers (``models.phrasing``). Generated text of a trained model enters the
draft sentence by sentence, and only when every finding the sentence expresses agrees with a
grounded source (a finding of a trained result with the same code and state, none contradicting
it) and it rests on at least one such finding or a quoted measurement; other sentences are kept
in ``Draft.unverified`` as model text, not verified.

This module must never read files, touch the database, or state a finding no engine reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.reports.draft import SECTIONS, Draft, DraftError, Evidence, Sentence
from models.base import EngineResult, Finding, Measurement, Region, Statement
from models.phrasing import Labeller, Phrasing, format_number, phrasing_for

__all__ = ["SECTIONS", "Draft", "DraftError", "Evidence", "Sentence", "compose",
           "KnowledgeLookup", "is_global_normal", "is_normal_statement"]

TECHNICAL_FAMILY = "technical"

KnowledgeLookup = Callable[[str], "dict[str, Any] | None"]

_NORMAL_CODES = {"norm", "normal", "normal_ecg", "no_finding", "nofinding", "no finding"}
_NORMAL_LABEL = re.compile(r"^\s*(normal (ecg|study|examination|radiograph|chest|ct|slide)\b|"
                           r"within normal limits|unremarkable|"
                           r"no (acute |significant )?(abnormalit|finding|disease))", re.IGNORECASE)
# Generated sections land in the draft section of the same name; any other name is findings.
_SECTION_OF = {"technique": "technique", "impression": "impression", "conclusion": "impression"}
_OPPOSITE = {"present": "absent", "absent": "present"}
CART_PREFIX = "cart_"  # measurements an engine read from the acquiring device (ECG carts)


# ---------------------------------------------------------------------------- wording helpers

def _quantity(m: Measurement, phrasing: Phrasing) -> str:
    unit = phrasing.unit_words.get(m.unit, m.unit)
    if unit == "1":
        return format_number(m.value)
    sep = "" if unit.startswith("/") else " "
    return f"{format_number(m.value)}{sep}{unit}"


def _phrase(m: Measurement, phrasing: Phrasing) -> str:
    return f"{m.name.replace('_', ' ')}{phrasing.where(m.where)} {_quantity(m, phrasing)}"


def _capital(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _sentence_end(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _code_key(code: Any) -> str:
    return code.key.lower()


def is_global_normal(finding: Finding) -> bool:
    """True for a whole-study negative statement such as "Normal ECG" or "No finding"."""
    code = finding.code.value.strip().lower()
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
                    {"name": m.name, "value": m.value, "unit": m.unit,
                     "code": m.code.to_dict() if m.code else None, "where": m.where.to_dict()})


def _finding_evidence(f: Finding, model: str) -> Evidence:
    return Evidence("finding", f.code.value, model,
                    {"label": f.label, "state": f.state, "score": f.score,
                     "code": f.code.to_dict(), "criteria": f.criteria,
                     "where": f.where.to_dict()})


def _region_evidence(r: Region, model: str) -> Evidence:
    return Evidence("region", r.id, model, r.to_dict())


# ---------------------------------------------------------------------------- composing

@dataclass
class _Grouped:
    """Present findings with one code, as reported by one or more engines."""

    finding: Finding
    evidence: list[Evidence]
    measurements: list[tuple[Measurement, Phrasing]]
    order: int


def compose(results: Iterable[EngineResult], knowledge: KnowledgeLookup | None = None,
            warnings: Iterable[str] = (), labeller: Labeller | None = None) -> Draft:
    """Compose a draft from engine results (see the module docstring for the rules).

    ``knowledge(id)`` returns the knowledge entry (with a ``title``) or None; ids it cannot
    resolve are dropped from the evidence and noted. Without it, cited ids are kept unresolved.
    ``warnings`` are the pipeline's own (an optional engine that was skipped). ``labeller``
    reads the findings of a generated sentence that does not list them itself.
    """
    draft = Draft(warnings=list(warnings))
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
        # the technical engine's facts, then any engine's own (which image it read)
        if result.model.family == TECHNICAL_FAMILY or (
                isinstance(result.raw, Mapping) and result.raw.get("facts")):
            draft.sections["technique"].extend(_technique(result))

    draft.sections["findings"].extend(_key_measurements(trained))
    expressed = _generated(trained, labeller, draft)
    grouped = _present_findings(trained, knowledge, draft.notes)
    for g in grouped:
        if _code_key(g.finding.code) not in expressed["findings"]:
            draft.sections["findings"].append(Sentence(_finding_text(g), tuple(g.evidence)))
    draft.sections["impression"].extend(
        Sentence(_sentence_end(_capital(g.finding.label).rstrip(".")), tuple(g.evidence))
        for g in _impression(grouped, draft.warnings)
        if _code_key(g.finding.code) not in expressed["impression"])
    return draft


def _technique(result: EngineResult) -> list[Sentence]:
    tag = _tag(result)
    phrasing = phrasing_for(result.model.family)
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
        sentences.append(Sentence(_sentence_end(_capital(_phrase(m, phrasing))),
                                  (_measurement_evidence(m, tag),)))
    return sentences


def _key_measurements(results: list[EngineResult]) -> list[Sentence]:
    """One sentence per family that names key measurements in its phrasing table."""
    out = []
    for result in results:
        if result.model.family == TECHNICAL_FAMILY:
            continue
        phrasing = phrasing_for(result.model.family)
        index = phrasing.key_index()
        chosen: dict[int, Measurement] = {}
        for m in result.measurements:
            i = index.get(m.name.lower())
            if i is not None and m.where.lead is None and i not in chosen:
                chosen[i] = m
        if not chosen:
            continue
        order = sorted(chosen)
        # the acquiring device's own value (``cart_<name>``, read from the file) beside ours
        device = {m.name.lower().removeprefix(CART_PREFIX): m for m in result.measurements
                  if m.name.lower().startswith(CART_PREFIX) and m.where.lead is None}
        parts, used = [], []
        for i in order:
            text = f"{phrasing.key_measurements[i][0]} {_quantity(chosen[i], phrasing)}"
            theirs = device.pop(chosen[i].name.lower(), None)
            if theirs is not None:
                text += f" (acquiring device {_quantity(theirs, phrasing)})"
                used.append(theirs)
            parts.append(text)
        # a device value with no MedGate counterpart of that name (a QTc whose correction it
        # does not name), when it is a key measurement
        for name, theirs in device.items():
            i = index.get(name)
            if i is not None:
                parts.append(f"{phrasing.key_measurements[i][0]} by the acquiring device "
                             f"{_quantity(theirs, phrasing)}")
                used.append(theirs)
        evidence = tuple(_measurement_evidence(m, _tag(result))
                         for m in [chosen[i] for i in order] + used)
        out.append(Sentence(_sentence_end("; ".join(parts)), evidence))
    return out


def _grounded_index(results: list[EngineResult]) -> dict[str, list[tuple[Finding, str]]]:
    """Findings of trained results by code key, each with its model tag."""
    index: dict[str, list[tuple[Finding, str]]] = {}
    for result in results:
        for f in result.findings:
            index.setdefault(_code_key(f.code), []).append((f, _tag(result)))
    return index


def _check(statement: Statement, index: Mapping[str, list[tuple[Finding, str]]]
           ) -> tuple[list[Evidence], str | None]:
    """Evidence that agrees with the statement, or the reason it is not grounded."""
    sources = index.get(_code_key(statement.code), [])
    what = f"{statement.code.meaning} ({statement.code.key}) {statement.state}"
    against = [f for f, _ in sources if f.state == _OPPOSITE.get(statement.state)]
    if against:
        return [], f"states {what}, which a grounded source contradicts"
    agree = [(f, tag) for f, tag in sources if f.state == statement.state]
    if not agree:
        return [], f"states {what}, which no grounded source reports"
    return [_finding_evidence(f, tag) for f, tag in agree], None


def _generated(results: list[EngineResult], labeller: Labeller | None,
               draft: Draft) -> dict[str, set[str]]:
    """Put the verified sentences of generated text into the draft; keep the others as
    unverified model text. Returns, per draft section, the code keys of the present findings
    the kept sentences state, which the composer then does not state a second time there."""
    index = _grounded_index(results)
    expressed: dict[str, set[str]] = {name: set() for name in SECTIONS}
    for result in results:
        tag = _tag(result)
        measurements = {m.id: m for m in result.measurements}
        for section in result.text:
            target = _SECTION_OF.get(section.name.lower(), "findings")
            for sentence in section.sentences:
                statements = sentence.findings
                if not statements and labeller is not None:
                    statements = tuple(labeller(sentence.text))
                evidence = [_measurement_evidence(measurements[i], tag)
                            for i in sentence.measurements]
                reasons = []
                for st in statements:
                    found, reason = _check(st, index)
                    if reason:
                        reasons.append(reason)
                    evidence.extend(e for e in found if e not in evidence)
                if not evidence and not reasons:
                    reasons.append("names no finding or measurement that could ground it")
                if reasons:
                    draft.unverified.append({"model": tag, "section": section.name,
                                             "text": sentence.text, "reasons": reasons})
                    continue
                draft.sections[target].append(Sentence(sentence.text, tuple(evidence), tag))
                expressed[target].update(_code_key(st.code) for st in statements
                                         if st.state == "present")
    return expressed


def _present_findings(results: list[EngineResult], knowledge: KnowledgeLookup | None,
                      notes: list[str]) -> list[_Grouped]:
    groups: dict[str, _Grouped] = {}
    for result in results:
        tag = _tag(result)
        phrasing = phrasing_for(result.model.family)
        measurements = {m.id: m for m in result.measurements}
        regions = {r.id: r for r in result.regions}
        for f in result.findings:
            if f.state != "present":
                continue
            key = _code_key(f.code)
            if key not in groups:
                groups[key] = _Grouped(f, [], [], len(groups))
            g = groups[key]
            g.evidence.append(_finding_evidence(f, tag))
            for ref in f.evidence:
                if ref in measurements:
                    g.evidence.append(_measurement_evidence(measurements[ref], tag))
                    g.measurements.append((measurements[ref], phrasing))
                elif ref in regions:
                    g.evidence.append(_region_evidence(regions[ref], tag))
            for kid in f.knowledge:
                ev = _knowledge_evidence(kid, tag, knowledge)
                if ev is None:
                    notes.append(f"{tag}: knowledge entry {kid!r} cited by {f.code.value!r} was "
                                 "not found and is not cited")
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
    for m, phrasing in g.measurements:
        if m.id not in seen:
            seen.add(m.id)
            phrases.append(_phrase(m, phrasing))
    if phrases:
        text += f" ({'; '.join(phrases)})"
    return _sentence_end(text)


def _impression(grouped: list[_Grouped], warnings: list[str]) -> list[_Grouped]:
    """The findings the impression states, most certain abnormal first; normal statements
    only when nothing is abnormal."""
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

    return sorted(abnormal, key=rank) if abnormal else normal
