"""Liveness, readiness and Prometheus metrics. No key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.problems import problem_response
from app.readiness import check_all

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz() -> Response:
    checks = check_all()
    failed = [name for name, c in checks.items() if not c["ok"]]
    if failed:
        return problem_response(503, "not-ready", f"not ready: {', '.join(failed)} failed",
                                checks=checks, failed=failed)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
