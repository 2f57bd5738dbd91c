"""Studies as the REST API shows them: lists with filters, one study with its series, state,
timeline, jobs and reports, and deletion (rows first, then files)."""

from __future__ import annotations

import shutil
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Instance, Job, Patient, Report, Series, Study


def _t(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def list_studies(session: Session, *, patient_id: str | None = None, state: str | None = None,
                 domain: str | None = None, route_status: str | None = None,
                 modality: str | None = None, accession: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    stmt = select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
    if patient_id:
        stmt = stmt.where(Patient.patient_id == patient_id)
    if state:
        stmt = stmt.where(Study.state == state)
    if domain:
        stmt = stmt.where(Study.domain == domain)
    if route_status:
        stmt = stmt.where(Study.route_status == route_status)
    if accession:
        stmt = stmt.where(Study.accession_number == accession)
    if modality:
        stmt = stmt.where(select(Series.id).where(Series.study_fk == Study.id,
                                                  Series.modality == modality).exists())
    if since:
        stmt = stmt.where(Study.last_received_at >= since)
    if until:
        stmt = stmt.where(Study.last_received_at <= until)
    total = session.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = session.execute(stmt.order_by(Study.last_received_at.desc(), Study.id.desc())
                           .limit(limit).offset(offset)).all()
    return [summary(session, s, p) for s, p in rows], int(total or 0)


def summary(session: Session, study: Study, patient: Patient) -> dict[str, Any]:
    counts = session.execute(
        select(func.count(func.distinct(Series.id)), func.count(Instance.id))
        .select_from(Series).outerjoin(Instance, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id)).one()
    return {"study_uid": study.study_uid, "patient_id": patient.patient_id,
            "patient_name": patient.patient_name, "study_date": study.study_date,
            "accession_number": study.accession_number,
            "description": study.study_description, "state": study.state,
            "domain": study.domain, "route_status": study.route_status,
            "series_count": counts[0], "instance_count": counts[1],
            "first_received_at": _t(study.first_received_at),
            "last_received_at": _t(study.last_received_at),
            "completed_at": _t(study.completed_at)}


def timeline(study: Study) -> list[dict[str, Any]]:
    return [{"kind": e.kind, "at": _t(e.at), **({"detail": e.detail} if e.detail else {})}
            for e in study.events]


def detail(session: Session, study: Study) -> dict[str, Any]:
    from app.pipeline.jobs import job_dict

    patient = session.get(Patient, study.patient_fk)
    series = session.execute(
        select(Series, func.count(Instance.id)).outerjoin(Instance,
                                                          Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id).group_by(Series.id)
        .order_by(Series.series_number, Series.id)).all()
    jobs = session.scalars(select(Job).where(Job.study_fk == study.id).order_by(Job.id))
    reports = session.scalars(select(Report).where(Report.study_fk == study.id)
                              .order_by(Report.id))
    return {**summary(session, study, patient),
            "series": [{"series_uid": s.series_uid, "modality": s.modality,
                        "series_number": s.series_number, "description": s.series_description,
                        "body_part": s.body_part, "derived": s.derived,
                        "instance_count": n} for s, n in series],
            "timeline": timeline(study),
            "jobs": [job_dict(j) for j in jobs],
            "reports": [{"id": r.id, "domain": r.domain, "state": r.state,
                         "version": r.current_version, "addendum_of": r.addendum_of}
                        for r in reports]}


def last_job_failed(session: Session, study: Study) -> bool:
    state = session.scalar(select(Job.state).where(Job.study_fk == study.id,
                                                   Job.kind == "analysis")
                           .order_by(Job.id.desc()).limit(1))
    return state == "failed"


def get(session: Session, study_uid: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_uid == study_uid))


def delete(session: Session, study: Study) -> int:
    """Delete the study's rows (committed by the caller), then its files. Returns the number of
    instances removed. Rows go first: a crash in between leaves unreferenced files, never rows
    that point at missing files."""
    count = session.scalar(select(func.count(Instance.id)).join(Series).where(
        Series.study_fk == study.id)) or 0
    folder = get_settings().store_dir / study.study_uid
    patient_id = study.patient_fk
    session.delete(study)
    session.flush()
    if not session.scalar(select(func.count(Study.id)).where(Study.patient_fk == patient_id)):
        patient = session.get(Patient, patient_id)
        if patient is not None:
            session.delete(patient)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)
    # results beside the study (masks of engines and asks, drawn masks) go with it
    settings = get_settings()
    shutil.rmtree(settings.results_dir / study.study_uid, ignore_errors=True)
    shutil.rmtree(settings.asks_dir / study.study_uid, ignore_errors=True)
    return int(count)
