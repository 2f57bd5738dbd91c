"""Study grouping: a study is complete when it has been idle for STABLE_SECONDS (per domain) or
when someone says so. Completion happens once per burst of instances: a conditional UPDATE from
``receiving`` to ``complete`` decides the single winner even with several API processes, and the
pipeline's routing and job creation (``jobs.route_study``) run in that same transaction.

Instances that arrive after completion re-open the study; it completes again after the next
idle period. Nothing here creates a study row: only a stored instance does, so an upload that
fails before its first instance leaves nothing behind, and one that fails later leaves a study
that the idle timer still completes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Series, Study, utcnow
from app.timeline import add_event

# Provisional domain by modality, only for the per-domain idle time; routing decides the rest.
_MODALITY_DOMAIN = {"CR": "cxr", "DX": "cxr", "CT": "ct", "ECG": "ecg", "SM": "pathology"}


def instance_received(session: Session, study: Study, created: bool,
                      source: str = "", derived: bool = False) -> None:
    """Called by the store in the transaction that indexes new instances of ``study``
    (``created``: the study row is new in this transaction). MedGate's own results
    (``derived``) are not new images: the study stays as it is."""
    if derived:
        add_event(session, study.id, "result_stored", source=source)
        return
    now = utcnow()
    if study.state == "complete":
        study.state = "receiving"
        add_event(session, study.id, "reopened", source=source)
    elif created:
        add_event(session, study.id, "received", source=source)
    study.last_received_at = now


def provisional_domain(modalities: set[str]) -> str | None:
    for m in modalities:
        if m in _MODALITY_DOMAIN:
            return _MODALITY_DOMAIN[m]
    return None


def _modalities(session: Session, study_id: int) -> set[str]:
    return set(session.scalars(select(Series.modality).where(Series.study_fk == study_id)))


def _try_complete(session: Session, study_id: int, reason: str,
                  idle_since: datetime | None = None) -> bool:
    now = utcnow()
    stmt = (update(Study).where(Study.id == study_id, Study.state == "receiving")
            .values(state="complete", completed_at=now))
    if idle_since is not None:
        stmt = stmt.where(Study.last_received_at <= idle_since)
    if session.execute(stmt).rowcount != 1:
        session.rollback()
        return False
    study = session.get(Study, study_id)
    session.refresh(study)
    add_event(session, study.id, "complete", reason=reason)
    from app.pipeline import jobs  # routing and jobs are created in this same transaction

    jobs.route_study(session, study)
    session.commit()
    return True


def complete_study(session_factory, study_uid: str, reason: str = "requested") -> bool | None:
    """Complete one study now. None: no such study; False: it was already complete."""
    with session_factory() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
        if study_id is None:
            return None
        return _try_complete(session, study_id, reason)


def reanalyze_study(session_factory, study_uid: str, actor: str,
                    extra: tuple[str, ...] = ()) -> tuple[str, list[int]]:
    """Analyse a study again: a study still receiving is completed now (which routes it as
    usual); a complete one gets new jobs even if identical ones failed. Returns how it went
    ("completed" or "reanalysed") and the new job ids; raises ``jobs.JobConflict`` while a job
    of the study is open and LookupError for an unknown study. ``extra`` families run as
    optional engines after each rule's pipeline (a study still receiving is completed as
    usual, without them)."""
    from app.pipeline import jobs

    with session_factory() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            raise LookupError(study_uid)
        if study.state == "receiving":
            session.rollback()
            _try_complete(session, study.id, f"reanalysis requested by {actor}")
            session.expire_all()
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            return "completed", jobs.open_jobs(session, study)
        created = jobs.reanalyze(session, study, actor, extra)
        ids = [j.id for j in created]
        session.commit()
        return "reanalysed", ids


def complete_idle(session_factory, now: datetime | None = None) -> list[str]:
    """Complete every study idle for its domain's stable time; return their UIDs."""
    settings = get_settings()
    now = now or utcnow()
    done: list[str] = []
    with session_factory() as session:
        receiving = session.execute(
            select(Study.id, Study.study_uid, Study.last_received_at)
            .where(Study.state == "receiving")).all()
        for study_id, uid, last in receiving:
            domain = provisional_domain(_modalities(session, study_id))
            stable = timedelta(seconds=settings.stable_seconds_for(domain))
            if last is not None and now - last >= stable:
                if _try_complete(session, study_id, "idle", idle_since=now - stable):
                    done.append(uid)
            session.rollback()  # end any read transaction before the next study
    return done
