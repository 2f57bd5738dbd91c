"""The one entry point for knowledge retrieval: ``search`` and ``get_entry``.

``search`` makes sure the index is built and current for this process (the first call per
index folder checks the corpus hash and the embedder and rebuilds only if either changed),
identifies the domain, runs the hybrid search in that domain's index and applies the adaptive
selection rule.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from app.config import DOMAINS, get_settings
from app.rag import index as kbindex
from app.rag.cases import search_cases
from app.rag.corpus import default_corpus_root
from app.rag.domain import domain_from_metadata, identify_domain
from app.rag.embedder import QUERIES, embedder_name, query_vector
from app.rag.lexical import tokenize
from app.rag.select import DEFAULT_FLOOR, DEFAULT_GAMMA, DEFAULT_K, adaptive_select

_CHECKED: set[Path] = set()
_CHECK_LOCK = threading.Lock()


def ensure_index(
    kb_dir: Path | None = None, corpus_root: Path | None = None
) -> kbindex.KnowledgeBase:
    """The loaded index, built first if missing or stale (checked once per process and folder).

    The corpus is ``corpus_root``, else the one the index was last built from, else the default.
    Without a corpus on disk, an index built with the configured embedder is used as it is.
    """
    out = Path(kb_dir or get_settings().kb_dir).resolve()
    if out in _CHECKED:  # checked once per process: from then on only the cached index
        return kbindex.load(out)
    with _CHECK_LOCK:
        if out not in _CHECKED:
            meta = kbindex.read_meta(out) or {}
            root = corpus_root or meta.get("corpus_root")
            root = Path(root) if root and Path(root).is_dir() else default_corpus_root()
            if root.is_dir():
                kbindex.build(root, out)
            elif meta.get("embedder") != embedder_name():
                raise RuntimeError(
                    f"index in {out} was built with {meta.get('embedder')!r}, the configured "
                    f"embedder is {embedder_name()!r}, and no corpus is at hand to rebuild it"
                )
            _CHECKED.add(out)
    return kbindex.load(out)


# What ``warm_up`` did in this process, for /readyz: idle (never asked), building, ready, failed.
WARM: dict[str, Any] = {"state": "idle"}


def warm_up(kb_dir: Path | None = None) -> dict[str, Any]:
    """Make the first search fast: check (and if needed build) the index, load it, and load the
    embedder's model with one query. `medgate serve` runs it in a thread at start; /readyz
    reports ``WARM``. Searches meanwhile wait for the index, never answer from half of one."""
    t0 = time.perf_counter()
    WARM.clear()
    WARM.update(state="building", started=time.time())
    try:
        kb = ensure_index(kb_dir)
        WARM.update(state="loading embedder", index=kb.meta.get("current"),
                    entries=len(kb.entries))
        query_vector("warm-up query")
    except Exception as exc:  # noqa: BLE001 - reported by /readyz and in the log
        WARM.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:300])
        raise
    WARM.update(state="ready", seconds=round(time.perf_counter() - t0, 2),
                embedder=kb.meta.get("embedder"))
    return dict(WARM)


def reset() -> None:
    """Forget which index folders were checked and loaded (tests, after changing settings)."""
    with _CHECK_LOCK:
        _CHECKED.clear()
    kbindex.forget()
    QUERIES.clear()
    WARM.clear()
    WARM["state"] = "idle"


def _hit(kb: kbindex.KnowledgeBase, d: str, h: kbindex.ChunkHit) -> dict[str, Any]:
    return {
        "id": h.entry,
        "title": kb.entries[h.entry].title if h.entry in kb.entries else h.entry,
        "score": round(h.score, 4),
        "passage": kb.domains[d].chunks[h.chunk]["text"],
        "domain": d,
    }


def search(
    query: str,
    domain: str | None = None,
    k: int = DEFAULT_K,
    gamma: float = DEFAULT_GAMMA,
    *,
    metadata: Any = None,
    floor: float = DEFAULT_FLOOR,
    fusion: str = kbindex.DEFAULT_FUSION,
    cases: int = 0,
    kb_dir: Path | None = None,
) -> dict[str, Any]:
    """Knowledge entries for a query: ``{"domain", "results": [{"id", "title", "score",
    "passage"}]}``.

    ``domain`` (e.g. the routing result) wins; else ``metadata`` (DICOM keywords or a pydicom
    Dataset); else the domain is guessed from the text. When no domain can be told, all domains
    are searched and ``domain`` is None. With ``cases > 0``, up to that many similar signed
    reports of the domain come back under ``"cases"``.
    """
    if not query or not query.strip():
        raise ValueError("empty query")
    kb = ensure_index(kb_dir)
    qvec = query_vector(query)
    qtoks = tokenize(query)
    ranked: dict[str, list[kbindex.ChunkHit]] = {}
    if not domain and fusion == kbindex.DEFAULT_FUSION and not domain_from_metadata(metadata):
        # The text decides the domain from every domain's hits: rank each domain once.
        ranked = {d: kb.domains[d].search(qvec, qtoks) for d in DOMAINS}
    dom = identify_domain(query, domain=domain, metadata=metadata, kb=kb, qvec=qvec,
                          ranked=ranked)
    pairs = []
    for d in [dom] if dom else list(DOMAINS):
        hits = ranked[d] if d in ranked else kb.domains[d].search(qvec, qtoks, fusion=fusion)
        pairs += [(d, h) for h in hits]
    kept = adaptive_select(
        pairs, score=lambda p: p[1].score, k=k, gamma=gamma, floor=floor, key=lambda p: p[1].entry
    )
    out: dict[str, Any] = {"domain": dom, "results": [_hit(kb, d, h) for d, h in kept]}
    for r in out["results"]:
        if dom:
            r.pop("domain")
    if cases > 0 and dom:
        out["cases"] = search_cases(query, dom, k=cases, gamma=gamma, floor=floor, kb_dir=kb_dir)
    return out


def knowledge_search(query: str, domain: str) -> list[dict[str, Any]]:
    """What an engine gets as ``StudyInput.knowledge``: the adaptively selected entries of
    ``domain`` for ``query`` (``id``, ``title``, ``score``, ``passage``)."""
    return search(query, domain=domain)["results"]


def get_entry(entry_id: str, *, kb_dir: Path | None = None) -> dict[str, Any] | None:
    """The whole entry (front matter fields and sections) by id, or None when unknown."""
    e = ensure_index(kb_dir).entries.get(entry_id)
    return e.to_dict() if e else None
