"""The study timeline: one ``StudyEvent`` row per step a study goes through (received, complete,
queued, started, finished, drafted, signed, ...). Ingest, the pipeline and the report lifecycle
all write here, so this module sits below them and imports only the database models."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import StudyEvent


def add_event(session: Session, study_id: int | None, kind: str,
              **detail: Any) -> StudyEvent | None:
    """Add an event to ``study_id``'s timeline inside the caller's transaction. A job of no
    study (a model validation) has no timeline: nothing is added."""
    if study_id is None:
        return None
    event = StudyEvent(study_fk=study_id, kind=kind, detail=detail)
    session.add(event)
    return event
