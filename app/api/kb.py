"""Knowledge retrieval for clinicians: search and read the entries the drafts cite."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import require
from app.api.problems import Problem
from app.config import DOMAINS
from app.rag.corpus import knowledge_lookup
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1/kb", tags=["knowledge"])


@router.get("/search")
async def kb_search(q: str = Query(..., min_length=1, max_length=1000),
                    domain: str | None = None, k: int = Query(5, ge=1, le=50),
                    gamma: float = Query(1.5, gt=1.0, le=10.0),
                    p: Principal = Depends(require("clinician"))) -> dict:
    if domain is not None and domain not in DOMAINS:
        raise Problem(422, "validation-error", f"domain must be one of {DOMAINS}")
    from app.rag.search import search

    try:
        # Embedding runs on the CPU; keep it off the event loop.
        return await run_in_threadpool(search, q, domain, k, gamma)
    except ValueError as exc:
        raise Problem(422, "validation-error", str(exc)) from exc


@router.get("/entries/{entry_id}")
def kb_entry(entry_id: str, p: Principal = Depends(require("clinician"))) -> dict:
    entry = knowledge_lookup()(entry_id)
    if entry is None:
        raise Problem(404, "not-found", f"no knowledge entry {entry_id!r}")
    return entry
