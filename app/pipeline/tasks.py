"""Celery tasks. Each task is a thin wake-up: the work and its state live in modules below."""

from __future__ import annotations

import socket

from app.pipeline.celery_app import celery_app


@celery_app.task(name="medgate.ping")
def ping() -> dict[str, str]:
    """Proves the path API → broker → worker → result."""
    return {"pong": "ok", "worker": socket.gethostname()}


@celery_app.task(name="medgate.run_job", bind=True, max_retries=8, ignore_result=True)
def run_job(self, job_id: int) -> str:  # noqa: ANN001 - Celery's bound task
    """Run one analysis job; transient errors retry with exponential backoff."""
    from app.pipeline.runner import TransientError, execute

    try:
        return execute(job_id)
    except TransientError as exc:
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 60)) from exc
