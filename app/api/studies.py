"""Studies: list, inspect, complete, delete."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.api.deps import Offset, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.config import get_settings
from app.db.session import session_factory
from app.dicom import studies
from app.pipeline import grouping
from app.pipeline.families import known_families
from app.pipeline.jobs import JobConflict
from app.security import audit
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
READERS = ("clinician", "pacs")


def _study_or_404(session: Session, uid: str, p: Principal, action: str):  # noqa: ANN202
    study = studies.get(session, uid)
    if study is None:
        audit.record(session, p.actor, action, "study", uid, outcome="not_found")
        session.commit()
        raise Problem(404, "not-found", f"no study {uid}")
    return study


@router.get("")
def list_studies(p: Principal = Depends(require(*READERS)),
                 session: Session = Depends(get_session), patient_id: str | None = None,
                 state: str | None = None, domain: str | None = None,
                 route_status: str | None = Query(None, description="routed or unrouted"),
                 modality: str | None = None, accession_number: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = Query(50, ge=1, le=500), offset: Offset = 0) -> dict:
    items, total = studies.list_studies(
        session, patient_id=patient_id, state=state, domain=domain, route_status=route_status,
        modality=modality, accession=accession_number, since=since, until=until, limit=limit,
        offset=offset)
    audit.record(session, p.actor, "study.list", "study", "",
                 detail={"count": len(items), "patient_id": patient_id})
    session.commit()
    return {"studies": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{study_uid}")
def get_study(study_uid: str, p: Principal = Depends(require(*READERS)),
              session: Session = Depends(get_session)) -> dict:
    study = _study_or_404(session, study_uid, p, "study.read")
    body = studies.detail(session, study)
    audit.record(session, p.actor, "study.read", "study", study_uid)
    session.commit()
    return body


@router.post("/{study_uid}/complete")
def complete(study_uid: str, p: Principal = Depends(require(*READERS)),
             session: Session = Depends(get_session)) -> dict:
    _study_or_404(session, study_uid, p, "study.complete")
    done = grouping.complete_study(session_factory(get_settings().db_url), study_uid,
                                   reason=f"requested by {p.actor}")
    audit.record(session, p.actor, "study.complete", "study", study_uid,
                 outcome="success" if done else "noop")
    session.commit()
    session.expire_all()
    study = studies.get(session, study_uid)
    body = {"study_uid": study_uid, "completed_now": bool(done), "state": study.state,
            "route_status": study.route_status, "domain": study.domain}
    if not done and studies.last_job_failed(session, study):
        body["hint"] = (f"the study's last analysis failed; POST /api/v1/studies/{study_uid}"
                        "/reanalyze runs it again")
    return body


class ReanalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engines: list[str] = Field(default_factory=list, max_length=8, description=(
        "families to run as well, as optional engines after the rule's pipeline (for example "
        "medrega, which no shipped rule runs by default)"))


@router.post("/{study_uid}/reanalyze", status_code=202, responses=problems(409, 422))
def reanalyze(study_uid: str, body: ReanalyzeRequest | None = None,
              p: Principal = Depends(require("clinician")),
              session: Session = Depends(get_session)) -> dict:
    """Analyse the study's current instances again, even when an identical job failed;
    ``engines`` adds families on request."""
    _study_or_404(session, study_uid, p, "study.reanalyze")
    extra = tuple(dict.fromkeys(body.engines)) if body is not None else ()
    unknown = [f for f in extra if f not in known_families()]
    if unknown:
        raise Problem(422, "unknown-engine", f"unknown engine famil"
                      f"{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: "
                      f"{sorted(known_families())}")
    try:
        how, job_ids = grouping.reanalyze_study(session_factory(get_settings().db_url),
                                                study_uid, actor=p.actor, extra=extra)
    except JobConflict as exc:
        audit.record(session, p.actor, "study.reanalyze", "study", study_uid, outcome="conflict")
        session.commit()
        raise Problem(409, "job-open", str(exc)) from exc
    if not job_ids:
        audit.record(session, p.actor, "study.reanalyze", "study", study_uid,
                     outcome="unrouted")
        session.commit()
        raise Problem(409, "unrouted", "no routing rule matches this study; change the rules "
                                       "(PUT /api/v1/admin/routes) and ask again")
    audit.record(session, p.actor, "study.reanalyze", "study", study_uid,
                 detail={"jobs": job_ids, "how": how, "engines": list(extra)})
    session.commit()
    return {"study_uid": study_uid, "jobs": job_ids, "how": how}


@router.delete("/{study_uid}")
def delete_study(study_uid: str, p: Principal = Depends(require("admin")),
                 session: Session = Depends(get_session)) -> dict:
    study = _study_or_404(session, study_uid, p, "study.delete")
    audit.record(session, p.actor, "study.delete", "study", study_uid)
    removed = studies.delete(session, study)
    return {"study_uid": study_uid, "deleted_instances": removed}
