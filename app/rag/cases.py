"""Per-domain case index: signed final reports, searchable as similar prior cases.

``add_case`` appends one JSON line (report id, text, embedder name, float32 vector in base64) to
``<kb_dir>/cases/<domain>.jsonl`` under an exclusive ``fcntl`` lock, in a single ``write`` on a
file opened for appending, so concurrent processes never interleave lines. Readers consume only
complete lines and keep their place, so each process loads a case once and then reads only what
other processes appended since. A report added again (an amendment) replaces its earlier text.

Search is the same hybrid as the knowledge index (cosine and BM25, convex fusion) followed by
the adaptive selection rule.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import numpy as np

from app.config import DOMAINS, get_settings
from app.rag.embedder import Embedder, get_embedder, query_vector
from app.rag.index import DENSE_WEIGHT, file_lock
from app.rag.lexical import BM25, tokenize
from app.rag.select import DEFAULT_FLOOR, DEFAULT_GAMMA, adaptive_select


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain '{domain}' (one of {', '.join(DOMAINS)})")


class CaseIndex:
    """The cases of one domain as seen by this process; ``refresh`` reads new lines."""

    def __init__(self, path: Path, embedder: Embedder) -> None:
        self.path = path
        self.emb = embedder
        self.offset = 0
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.alive: list[bool] = []
        self.latest: dict[str, int] = {}
        self.bm25 = BM25()
        self._vecs: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.latest)

    def refresh(self) -> None:
        with self._lock:
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(self.offset)
                    data = fh.read()
            except FileNotFoundError:
                return
            end = data.rfind(b"\n")
            if end < 0:
                return
            self.offset += end + 1
            rows = [json.loads(line) for line in data[: end + 1].splitlines() if line.strip()]
            self._append(rows)

    def _append(self, rows: list[dict]) -> None:
        if not rows:
            return
        vecs = np.zeros((len(rows), self.emb.dim), dtype=np.float32)
        stale = []
        for i, r in enumerate(rows):
            if r.get("embedder") == self.emb.name:
                vecs[i] = np.frombuffer(base64.b64decode(r["vec"]), dtype=np.float32)
            else:
                stale.append(i)  # written with another embedder: embed it again here
        if stale:
            vecs[stale] = self.emb.embed([rows[i]["text"] for i in stale])
        for r in rows:
            row = len(self.ids)
            old = self.latest.get(r["report_id"])
            if old is not None:
                self.alive[old] = False
            self.latest[r["report_id"]] = row
            self.ids.append(r["report_id"])
            self.texts.append(r["text"])
            self.alive.append(True)
            self.bm25.add(tokenize(r["text"]))
        self._vecs.append(vecs)
        self._matrix = None

    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = (
                np.vstack(self._vecs) if self._vecs else np.zeros((0, self.emb.dim), np.float32)
            )
            self._vecs = [self._matrix]
        return self._matrix

    def scores(self, query: str) -> list[dict]:
        qtoks = tokenize(query)
        with self._lock:
            if not self.ids:
                return []
            dense = self.matrix() @ query_vector(query, self.emb)
            lex = self.bm25.scores(qtoks)
            norm = self.bm25.query_norm(qtoks)
            lexn = np.minimum(lex / norm, 1.0) if norm > 0 else np.zeros_like(lex)
            fused = DENSE_WEIGHT * np.maximum(dense, 0.0) + (1 - DENSE_WEIGHT) * lexn
            return [
                {"report_id": self.ids[i], "score": float(fused[i]), "text": self.texts[i]}
                for i in range(len(self.ids))
                if self.alive[i]
            ]


_INDEXES: dict[tuple[Path, str], CaseIndex] = {}
_INDEXES_LOCK = threading.Lock()


def _case_path(domain: str, kb_dir: Path | None) -> Path:
    return Path(kb_dir or get_settings().kb_dir).resolve() / "cases" / f"{domain}.jsonl"


def case_index(domain: str, *, kb_dir: Path | None = None) -> CaseIndex:
    """This process's view of one domain's case index, brought up to date."""
    _check_domain(domain)
    path = _case_path(domain, kb_dir)
    emb = get_embedder()
    with _INDEXES_LOCK:
        idx = _INDEXES.get((path, emb.name))
        if idx is None:
            idx = _INDEXES[(path, emb.name)] = CaseIndex(path, emb)
    idx.refresh()
    return idx


def add_case(domain: str, report_id: str, text: str, *, kb_dir: Path | None = None) -> None:
    """Append a signed final report's text to the domain's case index (safe across processes)."""
    _check_domain(domain)
    if not text.strip():
        raise ValueError("empty report text")
    emb = get_embedder()
    vec = emb.embed([text])[0].astype(np.float32)
    line = json.dumps(
        {
            "report_id": str(report_id),
            "text": text,
            "embedder": emb.name,
            "vec": base64.b64encode(vec.tobytes()).decode(),
            "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        ensure_ascii=False,
    )
    path = _case_path(domain, kb_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def search_cases(
    query: str,
    domain: str,
    k: int = 5,
    *,
    gamma: float = DEFAULT_GAMMA,
    floor: float = DEFAULT_FLOOR,
    kb_dir: Path | None = None,
) -> list[dict]:
    """Similar signed reports of the domain: ``[{"report_id", "score", "text"}]``, best first."""
    hits = case_index(domain, kb_dir=kb_dir).scores(query)
    kept = adaptive_select(hits, k=k, gamma=gamma, floor=floor, key=lambda h: h["report_id"])
    return [{**h, "score": round(h["score"], 4)} for h in kept]


def count_cases(domain: str, *, kb_dir: Path | None = None) -> int:
    """Number of distinct reports in the domain's case index."""
    return len(case_index(domain, kb_dir=kb_dir))
