"""Celery tasks. Each task is a thin wake-up: the work and its state live in modules below."""

from __future__ import annotations

import socket

from app.pipeline.celery_app import celery_app


@celery_app.task(name="medgate.ping")
def ping() -> dict[str, str]:
    """Proves the path API → broker → worker → result."""
    return {"pong": "ok", "worker": socket.gethostname()}
