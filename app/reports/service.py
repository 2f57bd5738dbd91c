"""Reports and their immutable versions: drafts from the pipeline, edits, signing, amendments.

Every change writes a new ``ReportVersion`` with its author, time and ETag; nothing is updated in
place except the report's pointers (``current_version``, ``proposed_version``) and its state.
Writes by people carry the ETag they saw (``If-Match``); a stale one is refused so two readers
cannot overwrite each other. The current version is the one numbered ``current_version``, which
is not always the newest.

An AI draft never overwrites a person's text: when the current version was written by a person
(state ``edited``), a new draft is stored as a proposed version (``proposed_version``) and the
person's version stays current, with its ETag, until they adopt or dismiss the proposal, edit or
sign. A pending report (no version yet) can be written by hand; its ETag is ``"r<id>-v0"`` and
``If-Match: *`` also stands for "no version yet".
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import Job, Patient, Report, ReportVersion, Study, StudyEvent, utcnow
from app.export import delivery
from app.registry import figures
from app.reports import viewer_links
from app.reports.draft import SECTIONS
from app.reports.lifecycle import FHIR_STATUS, SIGNED, allowed_actions, next_state
from models.cxr import labeller as cxr_labeller


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


class SignerUnknown(Exception):
    """A signature by a key that names no person (issued before keys recorded people)."""

    def __init__(self) -> None:
        super().__init__(
            "this key names no person, and a signature must name the person who signs; an admin "
            "must issue you a new clinician key with your name (medgate keys create --role "
            "clinician --name NAME --person \"Dr Jane Doe\" [--person-id ID], or POST "
            "/api/v1/admin/keys with person_name) and revoke this one")


# The reason a proposed version carries (also the worklist's flag, new_images_since_edit).
PROPOSAL_REASON = "new images since your edit"
# Actions that sign the text: they must name a person.
SIGNING = ("sign", "amend", "correct")
# Content keys that describe one version only and are never carried into the next one
# (acceptance and the proposal history are carried, and written anew at each signature).
_PER_VERSION = ("by", "signed_by", "proposal", "proposed", "labels", "labeller")
# The sections a signed CXR version's findings are labelled from, joined with one line break;
# the stored spans index that joined text.
LABELLED_SECTIONS = ("findings", "impression")


def signed_labels(sections: dict[str, str]) -> list[dict[str, Any]]:
    """The CXR labeller's findings for the signed text: findings + "\n" + impression."""
    text = "\n".join(sections.get(name, "") or "" for name in LABELLED_SECTIONS)
    return [lab.to_dict() for lab in cxr_labeller.label(text)]


def pending_etag(report: Report) -> str:
    """The ETag of a report with no version yet (state pending): deterministic, so a client
    can send the one its GET showed, as it would for any other version."""
    return f'"r{report.id}-v0"'


def current(report: Report) -> ReportVersion | None:
    """The version numbered ``report.current_version``: the text the report stands for. A
    proposed AI draft may be newer."""
    return _numbered(report, report.current_version)


def proposed(report: Report) -> ReportVersion | None:
    """The pending AI proposal, if any."""
    return _numbered(report, report.proposed_version) if report.proposed_version else None


def _numbered(report: Report, number: int | None) -> ReportVersion | None:
    return next((v for v in report.versions if v.number == number), None)


def _new_version(session: Session, report: Report, state: str, sections: dict[str, str],
                 content: dict[str, Any], author: str, author_kind: str,
                 reason: str | None = None) -> ReportVersion:
    """A new version numbered after every existing one (proposals included); pointers are
    the caller's to move."""
    number = max((v.number for v in report.versions), default=0) + 1
    version = ReportVersion(report_fk=report.id, number=number, state=state, sections=sections,
                            content=content, author=author, author_kind=author_kind,
                            reason=reason, etag=_etag(report.id, number, sections, state))
    session.add(version)
    report.versions.append(version)
    report.updated_at = utcnow()
    return version


def _add_version(session: Session, report: Report, state: str, sections: dict[str, str],
                 content: dict[str, Any], author: str, author_kind: str,
                 reason: str | None = None) -> ReportVersion:
    """A new version that becomes current."""
    version = _new_version(session, report, state, sections, content, author, author_kind,
                           reason)
    report.current_version = version.number
    report.state = state
    delivery.enqueue(session, report, version)
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
    """The pipeline's AI draft. It becomes current unless a person wrote the current version
    (state ``edited``): then it is stored as a proposal, and the person's version, state and
    ETag stay as they are. A newer proposal replaces the pointer; the older stays in history."""
    state = next_state(report.state, "draft")
    content: dict[str, Any] = {"draft": draft, "results": results, "job": job_id}
    if report.state != "edited":
        return _add_version(session, report, state, sections_text(draft), content, author,
                            "model")
    content["proposed"] = {"reason": PROPOSAL_REASON, "current_version": report.current_version,
                           "replaces": report.proposed_version}
    version = _new_version(session, report, "draft", sections_text(draft), content, author,
                           "model")
    report.proposed_version = version.number
    session.add(StudyEvent(study_fk=report.study_fk, kind="proposed",
                           detail={"report": report.id, "version": version.number,
                                   "reason": PROPOSAL_REASON}))
    return version


def _check(report: Report, if_match: str) -> ReportVersion | None:
    """The current version if ``if_match`` names it. ``*`` (RFC 9110 13.1.1) is taken only
    for a report with no version yet, so no text is ever changed by someone who did not see
    it; a report with no version also answers to its ``pending_etag``."""
    version = current(report)
    tag = if_match.strip()
    if version is None:
        if tag not in ("*", pending_etag(report)):
            raise StaleETag(pending_etag(report))
        return None
    if tag != version.etag:
        raise StaleETag(version.etag)
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


def _resolutions(report: Report) -> dict[int, str]:
    """Proposal version -> what became of it, from the versions that resolved each one."""
    out: dict[int, str] = {}
    for v in report.versions:
        record = v.content.get("proposal")
        if isinstance(record, dict):
            out[record["version"]] = record["resolution"]
        replaced = (v.content.get("proposed") or {}).get("replaces")
        if replaced:
            out.setdefault(replaced, f"replaced by version {v.number}")
    return out


def _acceptance(report: Report, signed: dict[str, str]) -> dict[str, Any]:
    """Per finding of the AI draft the signed text grew from (the newest AI draft that was
    current at some point: a proposal counts only once adopted): kept word for word, or
    changed/removed by the signer. These figures feed each model version's acceptance
    statistics."""
    resolved = _resolutions(report)
    ai = next((v for v in reversed(report.versions) if v.author_kind == "model"
               and ("proposed" not in v.content or resolved.get(v.number) == "adopted")), None)
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


# What becomes of a pending proposal when a person acts on the report.
_RESOLUTION = {"adopt": "adopted", "dismiss": "dismissed", "edit": "superseded_by_edit",
               "sign": "signed_over", "cancel": "closed", "withdraw": "closed"}


def apply(session: Session, report: Report, action: str, actor: str, if_match: str,
          sections: dict[str, str] | None = None, reason: str | None = None,
          person: dict[str, Any] | None = None) -> ReportVersion:
    """A clinician's action: edit, sign, amend, correct, withdraw, cancel, and adopt or
    dismiss a proposed AI draft. ``actor`` is the version's author text, ``person`` the
    person the key belongs to ({"name", "id", "key_id"}; a signature needs one)."""
    version = _check(report, if_match)
    pending = proposed(report)
    state = next_state(report.state, action, proposal=pending is not None)
    if action in SIGNING and person is None:
        raise SignerUnknown()
    if action in ("amend", "correct", "withdraw", "cancel") and not (reason or "").strip():
        raise ReportInputError(f"{action} needs a reason")
    if action == "edit" and not sections:
        raise ReportInputError("an edit needs at least one section")
    if action == "adopt":
        base, content = dict(pending.sections), dict(pending.content)
    else:
        base = version.sections if version is not None else dict.fromkeys(SECTIONS, "")
        content = dict(version.content) if version is not None else {}
    for key in _PER_VERSION:
        content.pop(key, None)
    new_sections = _merged_sections(base, sections if action != "adopt" else None)
    if person is not None:
        content["by"] = person
    history = _resolutions(report)
    if pending is not None:
        resolution = _RESOLUTION.get(action, action)
        content["proposal"] = {"version": pending.number, "resolution": resolution}
        history[pending.number] = resolution
        report.proposed_version = None
    if action in SIGNING:
        content["signed_by"] = person
        content["acceptance"] = _acceptance(report, new_sections)
        if report.domain == "cxr":
            content["labels"] = signed_labels(new_sections)
            content["labeller"] = f"cxr-labeller@{cxr_labeller.VERSION}"
        if history:
            content["proposals"] = [{"version": n, "resolution": r}
                                    for n, r in sorted(history.items())]
    new = _add_version(session, report, state, new_sections, content, actor, "user", reason)
    if action == "sign":
        figures.record_signature(session, report, new)  # each model version's figures
    detail: dict[str, Any] = {"report": report.id, "by": actor}
    if action == "sign":
        session.add(StudyEvent(study_fk=report.study_fk, kind="signed",
                               detail={**detail, "signed_by": person}))
    elif action in ("amend", "correct"):
        session.add(StudyEvent(study_fk=report.study_fk, kind=state,
                               detail={**detail, "signed_by": person}))
    elif action in ("withdraw", "cancel"):
        session.add(StudyEvent(study_fk=report.study_fk, kind=state, detail=detail))
    elif action in ("adopt", "dismiss"):
        session.add(StudyEvent(study_fk=report.study_fk, kind=f"proposal_{action}",
                               detail={**detail, "version": pending.number}))
    return new


def version_dict(v: ReportVersion) -> dict[str, Any]:
    """One version; ``by`` is the person who wrote it and ``signed_by`` the person who signed
    it ({"name", "id", "key_id"}), null for an AI draft or a key that names nobody."""
    return {"number": v.number, "state": v.state, "fhir_status": FHIR_STATUS[v.state],
            "author": v.author, "author_kind": v.author_kind, "reason": v.reason,
            "by": v.content.get("by"), "signed_by": v.content.get("signed_by"),
            "proposal": v.content.get("proposal"),
            "etag": v.etag, "created_at": v.created_at.isoformat() if v.created_at else None}


def proposed_dict(report: Report) -> dict[str, Any] | None:
    """The pending AI proposal as the report shows it, or None."""
    v = proposed(report)
    if v is None:
        return None
    return {"version": v.number, "reason": v.content.get("proposed", {}).get(
                "reason", PROPOSAL_REASON),
            "author": v.author, "job": v.content.get("job"), "sections": v.sections,
            "created_at": v.created_at.isoformat() if v.created_at else None}


def _finding_views(result: dict[str, Any], study_uid: str | None) -> list[dict[str, Any]]:
    """A trained result's findings; one resting on a region says where the viewer opens it."""
    regions = {g.get("id"): g for g in result.get("regions", [])}
    out = []
    for f in result.get("findings", []):
        view = {**f, "model": result["model"]}
        target = viewer_links.finding_target(study_uid, f, regions) if study_uid else None
        if target is not None:
            view["open"] = target
        out.append(view)
    return out


def _evidence_views(content: dict[str, Any], study_uid: str | None = None) -> dict[str, Any]:
    results = content.get("results", [])
    trained = [r for r in results if r.get("trained")]
    return {
        "findings": [f for r in trained for f in _finding_views(r, study_uid)],
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
    v = current(report) if number is None else _numbered(report, number)
    study = session.get(Study, report.study_fk)
    out: dict[str, Any] = {
        "id": report.id, "study_uid": study.study_uid if study else None,
        # the study in the viewer (/viewer, OHIF); findings with a region have their own link
        "viewer_url": viewer_links.study_url(study.study_uid) if study else None,
        "domain": report.domain, "priority": report.priority,
        "addendum_of": report.addendum_of,
        "state": report.state, "fhir_status": FHIR_STATUS[report.state],
        "allowed_actions": allowed_actions(report.state,
                                           proposal=report.proposed_version is not None),
        "proposed": proposed_dict(report),
        "created_at": report.created_at.isoformat() if report.created_at else None,
        "updated_at": report.updated_at.isoformat() if report.updated_at else None,
        "versions": [version_dict(x) for x in versions],
    }
    if v is None and number is None:
        out["etag"] = pending_etag(report)  # no version yet: what If-Match may name
    if v is not None:
        out["version"] = version_dict(v)
        out["etag"] = v.etag
        out["sections"] = v.sections
        out["sentences"] = v.content.get("draft", {}).get("sections", {})
        out["acceptance"] = v.content.get("acceptance")
        out.update(_evidence_views(v.content, study.study_uid if study else None))
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
            # an AI draft made after the clinician's edit waits for them (adopt or dismiss)
            "new_images_since_edit": report.proposed_version is not None,
            "proposed_version": report.proposed_version,
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
                                             Job.kind == "analysis",
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
