"""Liveness, readiness and Prometheus metrics. No key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app import metrics as prom
from app.api.openapi import problems
from app.api.problems import problem_response
from app.readiness import check_all

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=problems(503))
def readyz() -> Response:
    checks = check_all()
    failed = [name for name, c in checks.items() if not c["ok"]]
    if failed:
        return problem_response(503, "not-ready", f"not ready: {', '.join(failed)} failed",
                                checks=checks, failed=failed)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics")
def metrics() -> Response:
    body, content_type = prom.render()
    return Response(body, media_type=content_type)
