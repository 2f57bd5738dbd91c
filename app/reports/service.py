"""Reports and their immutable versions: drafts from the pipeline, edits, signing, amendments.

Every change writes a new ``ReportVersion`` with its author, time and ETag; nothing is updated in
place except the report's pointer to its current version and state. Writes by people carry the
ETag they saw (``If-Match``); a stale one is refused so two readers cannot overwrite each other.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import Job, Patient, Report, ReportVersion, Study, StudyEvent, utcnow
from app.reports.draft import SECTIONS
from app.reports.lifecycle import FHIR_STATUS, SIGNED, allowed_actions, next_state


class StaleETag(Exception):
    def __init__(self, current: str) -> None:
        super().__init__("the report changed since it was read; fetch it again")
        self.current = current


class ReportInputError(ValueError):
    """A request that cannot apply (unknown section, missing reason)."""


def _etag(report_id: int, number: int, sections: dict[str, Any], state: str) -> str:
    digest = hashlib.sha256(json.dumps([report_id, number, state, sections],
                                       sort_keys=True).encode()).hexdigest()[:16]
    return f'"r{report_id}-v{number}-{digest}"'


def current(report: Report) -> ReportVersion | None:
    return report.versions[-1] if report.versions else None


def _add_version(session: Session, report: Report, state: str, sections: dict[str, str],
                 content: dict[str, Any], author: str, author_kind: str,
                 reason: str | None = None) -> ReportVersion:
    number = report.current_version + 1
    version = ReportVersion(report_fk=report.id, number=number, state=state, sections=sections,
                            content=content, author=author, author_kind=author_kind,
                            reason=reason, etag=_etag(report.id, number, sections, state))
    session.add(version)
    report.versions.append(version)
    report.current_version = number
    report.state = state
    report.updated_at = utcnow()
    return version


def sections_text(draft: dict[str, Any]) -> dict[str, str]:
    """Plain text per section of a composed draft (the text clinicians edit)."""
    out = {}
    for name in SECTIONS:
        sentences = draft.get("sections", {}).get(name, [])
        out[name] = " ".join(s["text"] for s in sentences)
    return out


def open_report(session: Session, study: Study, domain: str) -> Report:
    """The report a new draft for this study and domain belongs to, created when needed.

    A signed report is never re-opened: a draft after signing starts an addendum."""
    latest = session.scalar(select(Report).where(Report.study_fk == study.id,
                                                 Report.domain == domain)
                            .order_by(Report.id.desc()).limit(1))
    if latest is not None and latest.state in ("pending", "draft", "edited"):
        return latest
    report = Report(study_fk=study.id, domain=domain, state="pending",
                    addendum_of=latest.id if latest is not None and latest.state in SIGNED
                    else None)
    session.add(report)
    session.flush()
    return report


def write_draft(session: Session, report: Report, draft: dict[str, Any],
                results: list[dict[str, Any]], author: str, job_id: int) -> ReportVersion:
    state = next_state(report.state, "draft")
    content = {"draft": draft, "results": results, "job": job_id}
    return _add_version(session, report, state, sections_text(draft), content, author, "model")


def _check(report: Report, if_match: str) -> ReportVersion:
    version = current(report)
    if version is None or if_match.strip() not in (version.etag, "*"):
        raise StaleETag(version.etag if version else "")
    return version


def _merged_sections(base: dict[str, str], changes: dict[str, str] | None) -> dict[str, str]:
    merged = dict(base)
    for name, text in (changes or {}).items():
        if name not in SECTIONS:
            raise ReportInputError(f"unknown section {name!r}; sections are {', '.join(SECTIONS)}")
        if not isinstance(text, str):
            raise ReportInputError(f"section {name!r} must be text")
        merged[name] = text
    return merged


def _acceptance(report: Report, signed: dict[str, str]) -> dict[str, Any]:
    """Per finding of the newest AI draft: kept word for word, or changed/removed by the signer.
    These figures feed each model version's acceptance statistics."""
    ai = next((v for v in reversed(report.versions) if v.author_kind == "model"), None)
    if ai is None:
        return {}
    signed_text = " ".join(signed.values())
    per_finding = []
    for name in ("findings", "impression"):
        for sentence in ai.content.get("draft", {}).get("sections", {}).get(name, []):
            for ev in sentence.get("evidence", []):
                if ev.get("kind") == "finding":
                    per_finding.append({"finding": ev["ref"], "model": ev.get("model"),
                                        "section": name,
                                        "kept": sentence["text"] in signed_text})
    return {"ai_version": ai.number, "findings": per_finding,
            "unchanged": all(ai.sections.get(k, "") == signed.get(k, "") for k in SECTIONS)}


def apply(session: Session, report: Report, action: str, actor: str, if_match: str,
          sections: dict[str, str] | None = None, reason: str | None = None) -> ReportVersion:
    """A clinician's action: edit, sign, amend, correct or withdraw."""
    version = _check(report, if_match)
    state = next_state(report.state, action)
    if action in ("amend", "correct", "withdraw", "cancel") and not (reason or "").strip():
        raise ReportInputError(f"{action} needs a reason")
    if action == "edit" and not sections:
        raise ReportInputError("an edit needs at least one section")
    new_sections = _merged_sections(version.sections, sections)
    content = dict(version.content)
    if action in ("sign", "amend", "correct"):
        content["acceptance"] = _acceptance(report, new_sections)
    new = _add_version(session, report, state, new_sections, content, actor, "user", reason)
    if action == "sign":
        session.add(StudyEvent(study_fk=report.study_fk, kind="signed",
                               detail={"report": report.id, "by": actor}))
    elif action in ("amend", "correct", "withdraw", "cancel"):
        session.add(StudyEvent(study_fk=report.study_fk, kind=state,
                               detail={"report": report.id, "by": actor}))
    return new


def version_dict(v: ReportVersion) -> dict[str, Any]:
    return {"number": v.number, "state": v.state, "fhir_status": FHIR_STATUS[v.state],
            "author": v.author, "author_kind": v.author_kind, "reason": v.reason,
            "etag": v.etag, "created_at": v.created_at.isoformat() if v.created_at else None}


def _evidence_views(content: dict[str, Any]) -> dict[str, Any]:
    results = content.get("results", [])
    trained = [r for r in results if r.get("trained")]
    return {
        "findings": [{**f, "model": r["model"]} for r in trained for f in r.get("findings", [])],
        "measurements": [{**m, "model": r["model"]} for r in trained
                         for m in r.get("measurements", [])],
        "regions": [{**g, "model": r["model"]} for r in trained for g in r.get("regions", [])],
        "models": [{**r["model"], "trained": r.get("trained", False)} for r in results],
        "untrained_results": [r for r in results if not r.get("trained")],
        "warnings": content.get("draft", {}).get("warnings", []),
        # sentences a trained model wrote that no grounded source confirms: never report text
        "unverified_text": content.get("draft", {}).get("unverified", []),
    }


def report_dict(session: Session, report: Report, number: int | None = None,
                timeline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    versions = report.versions
    if number is None:
        v = versions[-1] if versions else None
    else:
        v = next((x for x in versions if x.number == number), None)
    study = session.get(Study, report.study_fk)
    out: dict[str, Any] = {
        "id": report.id, "study_uid": study.study_uid if study else None,
        "domain": report.domain, "priority": report.priority,
        "addendum_of": report.addendum_of,
        "state": report.state, "fhir_status": FHIR_STATUS[report.state],
        "allowed_actions": allowed_actions(report.state),
        "created_at": report.created_at.isoformat() if report.created_at else None,
        "updated_at": report.updated_at.isoformat() if report.updated_at else None,
        "versions": [version_dict(x) for x in versions],
    }
    if v is not None:
        out["version"] = version_dict(v)
        out["etag"] = v.etag
        out["sections"] = v.sections
        out["sentences"] = v.content.get("draft", {}).get("sections", {})
        out["acceptance"] = v.content.get("acceptance")
        out.update(_evidence_views(v.content))
    if timeline is not None:
        out["timeline"] = timeline
    return out


# The worklist's pseudo-state: an open report (no signed text yet) whose latest job failed.
FAILED = "failed"
OPEN = ("pending", "draft", "edited")


def _analysis(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"job": job.id, "state": job.state, "error": job.error, "attempts": job.attempts,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}


def worklist_item(report: Report, study: Study, patient_id: str,
                  job: Job | None = None) -> dict[str, Any]:
    return {"id": report.id, "study_uid": study.study_uid, "patient_id": patient_id,
            "domain": report.domain, "state": report.state,
            "fhir_status": FHIR_STATUS[report.state], "priority": report.priority,
            "version": report.current_version, "study_date": study.study_date,
            "failed": bool(job is not None and job.state == "failed"
                           and report.state in OPEN),
            "analysis": _analysis(job),
            "created_at": report.created_at.isoformat() if report.created_at else None,
            "updated_at": report.updated_at.isoformat() if report.updated_at else None}


def worklist(session: Session, *, states: list[str], domain: str | None = None,
             patient_id: str | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 50, offset: int = 0
             ) -> list[dict[str, Any]]:
    """Reports with their study, patient ID and latest analysis job (of the study and the
    report's domain). ``failed`` in ``states`` selects open reports whose latest job failed."""
    latest = (select(func.max(Job.id)).where(Job.study_fk == Report.study_fk,
                                             Job.domain == Report.domain)
              .correlate(Report).scalar_subquery())
    stmt = (select(Report, Study, Patient.patient_id, Job)
            .join(Study, Report.study_fk == Study.id)
            .join(Patient, Study.patient_fk == Patient.id)
            .outerjoin(Job, Job.id == latest))
    if states:
        plain = [s for s in states if s != FAILED]
        wanted = [Report.state.in_(plain)] if plain else []
        if FAILED in states:
            wanted.append(and_(Job.state == "failed", Report.state.in_(OPEN)))
        stmt = stmt.where(or_(*wanted))
    if domain:
        stmt = stmt.where(Report.domain == domain)
    if patient_id:
        stmt = stmt.where(Patient.patient_id == patient_id)
    if since:
        stmt = stmt.where(Report.created_at >= since)
    if until:
        stmt = stmt.where(Report.created_at <= until)
    # Highest priority first; within a priority the oldest waits least long.
    rows = session.execute(stmt.order_by(Report.priority.desc(), Report.created_at, Report.id)
                           .limit(limit).offset(offset)).all()
    return [worklist_item(r, s, pid, job) for r, s, pid, job in rows]
