"""Job messages sent after the transaction that made the job commits (a worker never sees a job
that is not there yet), forgotten if it rolls back. Every kind of job (analysis, ask, export)
is sent this way; the Celery task is named, not imported, so nothing here imports a task."""

from __future__ import annotations

import logging

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger("medgate.jobs")

RUN_JOB_TASK = "medgate.run_job"  # app.pipeline.tasks.run_job
_SEND_KEY = "medgate_jobs_to_send"


def send(job_id: int, queue: str) -> bool:
    from app.pipeline.celery_app import celery_app

    try:
        celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, retry=False)
        return True
    except Exception as exc:  # noqa: BLE001 - the sweeper sends it again later
        log.warning("could not send job %s to %s: %s", job_id, queue, exc)
        return False


def send_after_commit(session: Session, job_id: int, queue: str) -> None:
    """Send the job's message once the transaction that made it commits."""
    session.info.setdefault(_SEND_KEY, []).append((job_id, queue))


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    for job_id, queue in session.info.pop(_SEND_KEY, []):
        send(job_id, queue)


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(_SEND_KEY, None)
