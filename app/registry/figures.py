"""What each model version did and how it compares: one ``ModelRun`` per engine run of a job
(active or shadow), one ``ModelOutcome`` per run once the report it drafted is signed, and the
per-version figures built from them.

- **edit rate**: the share of the draft's text the signer changed, by character-level diff:
  ``1 - 2M / (|draft| + |signed|)`` over all sections, where M is the number of characters
  difflib matches (0: signed as drafted; 1: nothing kept).
- **finding agreement**: per finding code, the version's statement (present, or not) against
  the signed text's. The signed text is read by the domain's labeller: the CXR report labeller
  for chest radiographs, the ECG statement reader for ECGs. CT and pathology drafts state
  measured findings: a finding counts as signed present when a sentence that cites it survives
  into the signed text, and as signed absent when every sentence citing it was removed; a code
  no draft sentence cited was never judged and is not counted.
  Outcomes: ``agree_present``, ``agree_absent``, ``false_positive`` (the version says present,
  the signed text does not), ``miss`` (the signed text says present, the version does not).
  An uncertain statement counts as not present on either side.

Untrained runs (reference weights) never reach a draft and are not judged. Only a report's
first signature is judged; amendments describe later knowledge, not the draft.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app import metrics
from app.db.models import ModelOutcome, ModelRun, Report, ReportVersion

OUTCOMES = ("agree_present", "agree_absent", "false_positive", "miss")
_RANK = {"present": 2, "uncertain": 1, "absent": 0}
# the sections a labeller reads (the technique paragraph states no finding)
LABELLED_SECTIONS = ("findings", "impression")


def _key(code: Mapping[str, Any]) -> str:
    return f"{code.get('scheme', '')}:{code.get('value', '')}"


def stated(result: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Code key -> {"label", "state"} of everything a result states: its findings and the
    findings its generated sentences express (the strongest state when said twice)."""
    out: dict[str, dict[str, str]] = {}

    def add(key: str, label: str, state: str) -> None:
        if key not in out or _RANK.get(state, 0) > _RANK.get(out[key]["state"], 0):
            out[key] = {"label": label, "state": state}

    for f in result.get("findings", []):
        add(_key(f["code"]), f.get("label") or f["code"].get("meaning", ""), f["state"])
    for section in result.get("text", []):
        for sentence in section.get("sentences", []):
            for s in sentence.get("findings", []):
                add(_key(s["code"]), s["code"].get("meaning", ""), s["state"])
    return out


def compare_states(active: Mapping[str, Mapping[str, str]],
                   shadow: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """A shadow's statements against the active version's on the same study: per code, each
    one's state (None: not stated) and whether they agree on present-or-not."""
    codes = {}
    for key in sorted(set(active) | set(shadow)):
        a, s = active.get(key, {}).get("state"), shadow.get(key, {}).get("state")
        label = (active.get(key) or shadow.get(key) or {}).get("label", "")
        codes[key] = {"label": label, "active": a, "shadow": s,
                      "agree": (a == "present") == (s == "present")}
    agreeing = sum(1 for c in codes.values() if c["agree"])
    return {"codes": codes, "agreement": agreeing / len(codes) if codes else 1.0}


# ---------------------------------------------------------------------------- runs of a job

@dataclass
class Run:
    """One engine run as the worker saw it, before it is written."""

    family: str
    version: str
    version_id: int | None
    role: str
    outcome: str  # done | failed | timed_out
    run_seconds: float | None = None
    load_seconds: float | None = None
    error: str | None = None
    trained: bool | None = None
    result: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    findings: list[dict[str, str]] = field(default_factory=list)


def record_runs(session: Session, job_id: int, runs: Iterable[Run]) -> None:
    """The job's runs, in the caller's transaction; shadows keep their whole result."""
    for r in runs:
        session.add(ModelRun(job_fk=job_id, version_fk=r.version_id, family=r.family,
                             version=r.version, role=r.role, outcome=r.outcome,
                             run_seconds=r.run_seconds, load_seconds=r.load_seconds,
                             error=(r.error or None) and r.error[:2000], trained=r.trained,
                             findings=r.findings,
                             result=r.result if r.role == "shadow" else None,
                             comparison=r.comparison))


def count_runs(runs: Iterable[Run]) -> None:
    """The runs on /metrics (after their transaction committed)."""
    for r in runs:
        metrics.MODEL_RUNS.labels(family=r.family, version=r.version, role=r.role,
                                  outcome=r.outcome).inc()
        if r.run_seconds is not None and r.outcome == "done":
            metrics.MODEL_RUN_SECONDS.labels(family=r.family, version=r.version,
                                             role=r.role).observe(r.run_seconds)


# ---------------------------------------------------------------------------- signed reports

def edit_rate(draft: Mapping[str, str], signed: Mapping[str, str]) -> float:
    """Share of the draft's text changed before signing (see the module docstring)."""
    names = list(draft) + [n for n in signed if n not in draft]
    a = "\n".join(draft.get(n, "") or "" for n in names)
    b = "\n".join(signed.get(n, "") or "" for n in names)
    if not a and not b:
        return 0.0
    matched = sum(m.size for m in difflib.SequenceMatcher(None, a, b, autojunk=False)
                  .get_matching_blocks())
    return round(1.0 - 2.0 * matched / (len(a) + len(b)), 6)


@dataclass(frozen=True)
class SignedReading:
    """What the signed text says: codes it states present, the codes it was read for (a code
    outside ``judged`` is not counted), and how it was read."""

    present: frozenset[str]
    judged: frozenset[str] | None  # None: every code a labeller could read
    method: str


def _labelled_text(sections: Mapping[str, str]) -> str:
    return "\n".join(sections.get(n, "") or "" for n in LABELLED_SECTIONS)


def _kept_sentences(draft: Mapping[str, Any], signed: Mapping[str, str]) -> SignedReading:
    signed_text = " ".join(v or "" for v in signed.values())
    present, judged = set(), set()
    for name in LABELLED_SECTIONS:
        for sentence in draft.get("sections", {}).get(name, []):
            for ev in sentence.get("evidence", []):
                if ev.get("kind") != "finding":
                    continue
                code = (ev.get("detail") or {}).get("code") or {}
                key = _key(code) if code else ev.get("ref", "")
                judged.add(key)
                if sentence.get("text", "") and sentence["text"] in signed_text:
                    present.add(key)
    return SignedReading(frozenset(present), frozenset(judged), "kept-sentences")


def read_signed(domain: str, family: str, signed: Mapping[str, str],
                draft: Mapping[str, Any]) -> SignedReading:
    """The signed text's findings for judging ``family`` (see the module docstring)."""
    text = _labelled_text(signed)
    if domain == "cxr":
        from models.cxr import labeller
        from models.cxr.statements import observation_code, statements

        said = statements(text)
        vocab = frozenset(observation_code(c, c).key for c in labeller.OBSERVATIONS)
        return SignedReading(frozenset(s.code.key for s in said if s.state == "present"),
                             vocab, f"cxr-labeller@{labeller.VERSION}")
    if domain == "ecg":
        from models.ecg import statements as ecg

        said = ecg.label(text)
        vocab = ecg.vocabulary(family if family in ecg.FAMILIES else None)
        return SignedReading(frozenset(s.code.key for s in said if s.state == "present"),
                             frozenset(vocab), f"ecg-statements@{ecg.VERSION}")
    return _kept_sentences(draft, signed)


def judge(said: Mapping[str, Mapping[str, str]], reading: SignedReading
          ) -> dict[str, dict[str, str]]:
    """Per code: the version's statement against the signed reading. A version that states
    none of the codes read (the technical family on a radiograph) is not judged on findings."""
    spoken = set(said) if reading.judged is None else set(said) & reading.judged
    if not spoken:
        return {}
    codes = set(said) | set(reading.present)
    if reading.judged is not None:
        codes &= reading.judged
    out = {}
    for key in sorted(codes):
        model = said.get(key, {}).get("state") == "present"
        human = key in reading.present
        outcome = ("agree_present" if model and human else "false_positive" if model
                   else "miss" if human else "agree_absent")
        out[key] = {"label": said.get(key, {}).get("label", ""), "outcome": outcome}
    return out


def record_signature(session: Session, report: Report, signed: ReportVersion) -> list[ModelOutcome]:
    """Judge the runs of the job that drafted the text ``signed`` grew from (its AI version in
    ``content["acceptance"]``). Called in the signing transaction; a report signed before
    (an amendment) is not judged again."""
    if session.scalar(select(ModelOutcome.id).join(ReportVersion).where(
            ReportVersion.report_fk == report.id).limit(1)) is not None:
        return []
    number = (signed.content.get("acceptance") or {}).get("ai_version")
    ai = next((v for v in report.versions if v.number == number), None) if number else None
    job_id = ai.content.get("job") if ai is not None else None
    if job_id is None:
        return []
    runs = session.scalars(select(ModelRun).where(ModelRun.job_fk == job_id,
                                                  ModelRun.outcome == "done",
                                                  ModelRun.trained.is_(True))
                           .order_by(ModelRun.id)).all()
    draft = ai.content.get("draft", {})
    rate = edit_rate(ai.sections, signed.sections)
    out = []
    session.flush()
    for run in runs:
        reading = read_signed(report.domain, run.family, signed.sections, draft)
        said = {f["code"]: f for f in run.findings}
        row = ModelOutcome(run_fk=run.id, report_version_fk=signed.id, family=run.family,
                           version=run.version, role=run.role,
                           edit_rate=rate if run.role == "active" else None,
                           codes=judge(said, reading), method=reading.method)
        session.add(row)
        out.append(row)
    # counted on /metrics once the signature commits (nothing is counted for a rollback)
    session.info.setdefault(_COUNT_KEY, []).extend(
        (r.family, r.version, r.role, r.edit_rate, [c["outcome"] for c in r.codes.values()])
        for r in out)
    return out


_COUNT_KEY = "medgate_model_outcomes"


@event.listens_for(Session, "after_commit")
def _count_after_commit(session: Session) -> None:
    for family, version, role, rate, outcomes in session.info.pop(_COUNT_KEY, []):
        if rate is not None:
            metrics.MODEL_EDIT_RATE.labels(family=family, version=version).observe(rate)
        for outcome in outcomes:
            metrics.MODEL_FINDINGS.labels(family=family, version=version, role=role,
                                          outcome=outcome).inc()


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(_COUNT_KEY, None)


# ---------------------------------------------------------------------------- figures

def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 6)


def _spread(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": quantile(values, 0.5), "p95": quantile(values, 0.95)}


def _agreement(rows: list[ModelOutcome]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for row in rows:
        for key, c in row.codes.items():
            entry = per.setdefault(key, {"label": c.get("label", ""),
                                         **dict.fromkeys(OUTCOMES, 0)})
            entry["label"] = entry["label"] or c.get("label", "")
            entry[c["outcome"]] += 1
    totals = dict.fromkeys(OUTCOMES, 0)
    for entry in per.values():
        n = sum(entry[o] for o in OUTCOMES)
        entry["judged"] = n
        entry["agreement"] = round((entry["agree_present"] + entry["agree_absent"]) / n, 6)
        for o in OUTCOMES:
            totals[o] += entry[o]
    n = sum(totals.values())
    return {"reports": len(rows), **totals,
            "agreement": round((totals["agree_present"] + totals["agree_absent"]) / n, 6)
            if n else None,
            "codes": dict(sorted(per.items()))}


def version_figures(session: Session, family: str, version: str) -> dict[str, Any]:
    """The figures of one version: its runs by role and outcome, load and run times, and, per
    role, what signed reports said of it."""
    # the columns the figures use, not each shadow's whole stored result
    runs = session.execute(select(ModelRun.role, ModelRun.outcome, ModelRun.load_seconds,
                                  ModelRun.run_seconds, ModelRun.comparison)
                           .where(ModelRun.family == family, ModelRun.version == version)).all()
    outcomes = session.scalars(select(ModelOutcome).where(ModelOutcome.family == family,
                                                          ModelOutcome.version == version)
                               ).all()
    out: dict[str, Any] = {}
    for role in ("active", "shadow"):
        mine = [r for r in runs if r.role == role]
        judged = [o for o in outcomes if o.role == role]
        counts = {o: sum(1 for r in mine if r.outcome == o)
                  for o in ("done", "failed", "timed_out")}
        entry: dict[str, Any] = {
            "jobs": len(mine), **counts,
            "load_seconds": _spread([r.load_seconds for r in mine if r.load_seconds is not None]),
            "run_seconds": _spread([r.run_seconds for r in mine
                                    if r.outcome == "done" and r.run_seconds is not None]),
            "signed": _agreement(judged)}
        if role == "active":
            rates = [o.edit_rate for o in judged if o.edit_rate is not None]
            entry["edit_rate"] = {"reports": len(rates),
                                  "mean": round(sum(rates) / len(rates), 6) if rates else None,
                                  "p50": quantile(rates, 0.5)}
        else:
            compared = [r.comparison for r in mine if r.comparison]
            entry["against_active"] = {
                "runs": len(compared),
                "agreement": round(sum(c["agreement"] for c in compared) / len(compared), 6)
                if compared else None,
                "differing_codes": _differing(compared)}
        out[role] = entry
    return out


def _differing(comparisons: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in comparisons:
        for key, entry in c.get("codes", {}).items():
            if not entry.get("agree"):
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
