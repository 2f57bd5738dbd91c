"""Readiness checks for /readyz: the database, the broker, the storage folder, the embedded
worker and the knowledge index. A check raises when not ready; it may return details."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from sqlalchemy import text

from app.config import get_settings
from app.db.session import get_engine


def check_database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def check_broker() -> None:
    s = get_settings()
    if s.embedded_broker:
        folder = s.broker_dir / "in"
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise RuntimeError(f"broker folder {folder} is missing or not writable")
        return
    from app.pipeline.celery_app import celery_app

    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def check_storage() -> None:
    store = get_settings().store_dir
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=store, prefix=".ready-") as fh:
        fh.write(b"ok")
        fh.flush()
        os.fsync(fh.fileno())


def check_worker() -> None:
    """The embedded worker's heartbeat, when this server supervises one (read by its extra
    HTTP processes too)."""
    from app import services
    from app.pipeline.worker_beat import STALE_AFTER, age

    supervisor = services.SUPERVISOR
    heartbeat = supervisor.heartbeat if supervisor is not None else services.SHARED_HEARTBEAT
    if heartbeat is None:
        return
    seconds = age(heartbeat)
    if seconds is None:
        raise RuntimeError("the embedded worker has not started yet"
                           + (f" (restarted {supervisor.restarts} times)"
                              if supervisor is not None and supervisor.restarts else ""))
    if seconds > STALE_AFTER:
        raise RuntimeError(f"the embedded worker's last heartbeat was {seconds:.0f} s ago")


def check_knowledge() -> dict[str, Any] | None:
    """The knowledge index as this server's warm-up left it: building, loading the embedder,
    ready, or failed (then not ready: searches and the engines' citations would fail too)."""
    from app.rag.search import WARM

    state = dict(WARM)
    if state.get("state") == "failed":
        raise RuntimeError(f"knowledge index: {state.get('error')}")
    if state.get("state") == "idle":
        return None  # no warm-up in this process (not `medgate serve`): built on first search
    return {k: v for k, v in state.items() if k in ("state", "index", "entries", "seconds")}


CHECKS = {"database": check_database, "broker": check_broker, "storage": check_storage,
          "worker": check_worker, "knowledge": check_knowledge}


def check_all() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, fn in CHECKS.items():
        try:
            details = fn()
            out[name] = {"ok": True, **(details or {})}
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure by name
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return out
