"""Who am I, and a round trip through the task queue."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import require
from app.api.openapi import problems
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1", tags=["system"])


@router.get("/whoami")
def whoami(p: Principal = Depends(require("pacs", "clinician", "admin"))) -> dict:
    return {"key_id": p.key_id, "name": p.name, "role": p.role, "person": p.person}


@router.post("/admin/ping", responses=problems(503))
def ping(timeout: float = 10.0, p: Principal = Depends(require("admin"))) -> dict:
    """Send the ping task and wait for a worker's answer (admin; proves broker and worker)."""
    from app.api.problems import Problem
    from app.pipeline.tasks import ping as ping_task

    try:
        result = ping_task.apply_async().get(timeout=min(timeout, 60))
    except Exception as exc:  # noqa: BLE001 - reported to the caller as unavailable
        raise Problem(503, "worker-unavailable",
                      f"no worker answered the ping: {type(exc).__name__}") from exc
    return result
