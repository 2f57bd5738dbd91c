"""Per-domain hybrid indexes of the knowledge corpus: build, persist, load, search.

Each entry becomes up to three chunks (title + synonyms + codes + criteria; report wording;
follow-up), each prefixed with the title. Per domain, the chunk vectors go into one FAISS
``IndexFlatIP`` (inner product of L2-normalised vectors = cosine) and the chunk tokens into a
BM25 index. A query's chunk scores are fused, and each entry takes its best chunk's score and
text.

Fusion (``fuse``): ``convex`` (the default) is ``w * cosine + (1 - w) * bm25 / bm25_norm``, where
``bm25_norm`` (``BM25.query_norm``) is what a chunk holding every query term once would score,
capped at 1. Both parts are on fixed 0..1 scales, so the fused score means the same thing from
query to query, which the adaptive ratio rule and the absolute floor need. ``rrf``
(reciprocal-rank fusion) and ``minmax`` (per-query min-max) are kept for the benchmark.

On disk, under ``out_dir`` (``get_settings().kb_dir``): ``meta.json`` names the current index
folder, the corpus hash, the embedder and the index format; the folder holds
``<domain>.faiss``, ``<domain>.chunks.json`` and ``entries.json``. A build writes a new folder and
then replaces ``meta.json`` atomically, under a file lock, so readers in other processes see
either the old index or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from app.config import DOMAINS, get_settings
from app.rag.corpus import Entry, corpus_hash, default_corpus_root, load_corpus
from app.rag.embedder import Embedder, embedder_name, get_embedder
from app.rag.lexical import BM25, tokenize

FORMAT = 1  # bump when chunking or the files change, to force a rebuild
FUSIONS = ("convex", "rrf", "minmax")
DEFAULT_FUSION = "convex"
DENSE_WEIGHT = 0.5
RRF_K = 60
CANDIDATES = 200  # per retriever, when a domain has more chunks than FULL_SCAN
FULL_SCAN = 4096

Progress = Callable[[str, int, int], None]


def _clean(md: str) -> str:
    """Markdown to plain text for embedding: drop bullets, emphasis and link syntax."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", md)
    text = re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", text, flags=re.M)
    text = text.replace("**", "").replace("`", "")
    return re.sub(r"\s+", " ", text).strip()


def entry_chunks(e: Entry) -> list[tuple[str, str]]:
    """(kind, text) chunks indexed for one entry; ``main`` always comes first."""
    head = e.title
    if e.synonyms:
        head += " (" + "; ".join(e.synonyms) + ")"
    main = head
    if e.codes:
        main += ". Codes: " + ", ".join(e.codes)
    if e.section("Criteria"):
        main += ". Criteria: " + _clean(e.section("Criteria"))
    chunks = [("main", main)]
    for kind, section in (("report", "Report wording"), ("follow-up", "Follow-up")):
        if e.section(section):
            chunks.append((kind, f"{e.title}. {section}: {_clean(e.section(section))}"))
    return chunks


@dataclass
class ChunkHit:
    entry: str
    score: float
    dense: float
    lexical: float
    chunk: int


class DomainIndex:
    """One domain's chunks: a FAISS index of their vectors and a BM25 of their tokens."""

    def __init__(self, chunks: list[dict], vectors: np.ndarray | None, dim: int) -> None:
        self.chunks = chunks
        self.dim = dim
        self.faiss = faiss.IndexFlatIP(dim)
        if vectors is not None and len(vectors):
            self.faiss.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.bm25 = BM25()
        self.bm25.extend(c.get("tokens") or tokenize(c["text"]) for c in chunks)

    @classmethod
    def from_index(cls, chunks: list[dict], index: faiss.Index) -> DomainIndex:
        obj = cls.__new__(cls)
        obj.chunks, obj.dim, obj.faiss = chunks, index.d, index
        obj.bm25 = BM25()
        obj.bm25.extend(tokenize(c["text"]) for c in chunks)
        return obj

    def __len__(self) -> int:
        return len(self.chunks)

    def _vector(self, i: int) -> np.ndarray:
        return self.faiss.reconstruct(int(i))

    def chunk_scores(
        self,
        qvec: np.ndarray,
        qtoks: list[str],
        *,
        fusion: str = DEFAULT_FUSION,
        w: float = DENSE_WEIGHT,
    ) -> list[ChunkHit]:
        """Fused scores of the candidate chunks (all of them in a small domain)."""
        n = len(self.chunks)
        if n == 0:
            return []
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}")
        q = np.ascontiguousarray(qvec.reshape(1, -1), dtype=np.float32)
        lex_all = self.bm25.scores(qtoks)
        depth = n if n <= FULL_SCAN else CANDIDATES
        dv, di = self.faiss.search(q, depth)
        dense = {int(i): float(s) for i, s in zip(di[0], dv[0], strict=True) if i >= 0}
        if depth >= n:
            lex_ids = np.arange(n)
        else:
            lex_ids = np.argpartition(-lex_all, depth)[:depth]
            lex_ids = lex_ids[lex_all[lex_ids] > 0]
            for i in lex_ids:  # lexical-only candidates still need a dense score
                if int(i) not in dense:
                    dense[int(i)] = float(self._vector(int(i)) @ q[0])
        cand = sorted(set(dense) | {int(i) for i in lex_ids})
        d = np.array([dense[i] for i in cand], dtype=np.float32)
        lraw = lex_all[cand]
        norm = self.bm25.query_norm(qtoks)
        lex = np.minimum(lraw / norm, 1.0) if norm > 0 else np.zeros_like(lraw)
        fused = _fuse(d, lex, lraw, fusion, w)
        return [
            ChunkHit(self.chunks[c]["entry"], float(f), float(dd), float(ll), c)
            for c, f, dd, ll in zip(cand, fused, d, lex, strict=True)
        ]

    def search(
        self,
        qvec: np.ndarray,
        qtoks: list[str],
        *,
        fusion: str = DEFAULT_FUSION,
        w: float = DENSE_WEIGHT,
        limit: int | None = None,
    ) -> list[ChunkHit]:
        """Entries ranked by their best chunk, best first (ties broken by entry id)."""
        best: dict[str, ChunkHit] = {}
        for h in self.chunk_scores(qvec, qtoks, fusion=fusion, w=w):
            cur = best.get(h.entry)
            if cur is None or h.score > cur.score:
                best[h.entry] = h
        ranked = sorted(best.values(), key=lambda h: (-h.score, h.entry))
        return ranked[:limit] if limit else ranked


def _fuse(d: np.ndarray, lex: np.ndarray, lraw: np.ndarray, fusion: str, w: float) -> np.ndarray:
    if fusion == "convex":
        return w * np.maximum(d, 0.0) + (1.0 - w) * lex
    if fusion == "rrf":
        rd = np.empty(len(d))
        rd[np.argsort(-d, kind="stable")] = np.arange(1, len(d) + 1)
        rl = np.empty(len(d))
        rl[np.argsort(-lraw, kind="stable")] = np.arange(1, len(d) + 1)
        return 1.0 / (RRF_K + rd) + np.where(lraw > 0, 1.0 / (RRF_K + rl), 0.0)

    def mm(x: np.ndarray) -> np.ndarray:
        span = float(x.max() - x.min()) if len(x) else 0.0
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    return w * mm(d) + (1.0 - w) * mm(lraw)


@dataclass
class KnowledgeBase:
    """A loaded index: one DomainIndex per domain plus the entries."""

    path: Path
    meta: dict
    domains: dict[str, DomainIndex]
    entries: dict[str, Entry] = field(default_factory=dict)


@dataclass
class BuildResult:
    rebuilt: bool
    out_dir: Path
    corpus_hash: str
    embedder: str
    counts: dict[str, int]
    seconds: float


def _meta_path(out_dir: Path) -> Path:
    return out_dir / "meta.json"


def read_meta(out_dir: Path | None = None) -> dict | None:
    p = _meta_path(Path(out_dir or get_settings().kb_dir))
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def file_lock(path: Path):  # noqa: ANN201
    """An exclusive advisory lock (fcntl) held for the ``with`` block; works across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


def is_current(meta: dict | None, out_dir: Path, chash: str, emb_name: str) -> bool:
    return bool(
        meta
        and meta.get("format") == FORMAT
        and meta.get("corpus_hash") == chash
        and meta.get("embedder") == emb_name
        and (out_dir / meta.get("current", "-")).is_dir()
    )


def build(
    corpus_root: Path | None = None,
    out_dir: Path | None = None,
    *,
    progress: Progress | None = None,
    embedder: Embedder | str | None = None,
    force: bool = False,
) -> BuildResult:
    """Build the per-domain indexes unless the stored ones match the corpus and the embedder.

    ``progress(stage, done, total)`` is called with stages ``check``, ``embed`` and ``write``.
    Raises ``CorpusError`` when ``corpus.check`` finds problems. Returns whether it rebuilt.
    """
    t0 = time.perf_counter()
    root = Path(corpus_root or default_corpus_root()).resolve()
    out = Path(out_dir or get_settings().kb_dir).resolve()
    emb_name = embedder.name if hasattr(embedder, "embed") else embedder_name(embedder)
    report = progress or (lambda stage, done, total: None)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".build.lock"):
        report("check", 0, 1)
        chash = corpus_hash(root)
        meta = read_meta(out)
        if not force and is_current(meta, out, chash, emb_name):
            counts = {d: v["entries"] for d, v in meta.get("domains", {}).items()}
            report("check", 1, 1)
            return BuildResult(False, out, chash, emb_name, counts, time.perf_counter() - t0)
        entries = load_corpus(root, strict=True)
        report("check", 1, 1)
        emb = embedder if hasattr(embedder, "embed") else get_embedder(embedder)
        folder = f"index-{chash[:12]}-{uuid.uuid4().hex[:8]}"
        _write_index(out / folder, entries, emb, report)
        counts = {d: sum(1 for e in entries if e.domain == d) for d in DOMAINS}
        new_meta = {
            "format": FORMAT,
            "corpus_hash": chash,
            "corpus_root": str(root),
            "embedder": emb.name,
            "dim": emb.dim,
            "current": folder,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "domains": {d: {"entries": counts[d]} for d in DOMAINS},
        }
        _write_json(_meta_path(out), new_meta)
        _prune(out, keep={folder, (meta or {}).get("current", "")})
        report("write", 1, 1)
    forget(out)
    return BuildResult(True, out, chash, emb.name, counts, time.perf_counter() - t0)


def _write_index(folder: Path, entries: list[Entry], emb: Embedder, report: Progress) -> None:
    folder.mkdir(parents=True)
    per_domain = {d: [e for e in entries if e.domain == d] for d in DOMAINS}
    texts = {
        d: [(e.id, kind, text) for e in es for kind, text in entry_chunks(e)]
        for d, es in per_domain.items()
    }
    total = sum(len(t) for t in texts.values())
    done = 0
    report("embed", 0, total)
    for d in DOMAINS:
        rows = texts[d]
        vecs = []
        for i in range(0, len(rows), 32):
            vecs.append(emb.embed([t for _, _, t in rows[i : i + 32]]))
            done += len(rows[i : i + 32])
            report("embed", done, total)
        index = faiss.IndexFlatIP(emb.dim)
        if vecs:
            index.add(np.vstack(vecs).astype(np.float32))
        faiss.write_index(index, str(folder / f"{d}.faiss"))
        chunks = [{"entry": eid, "kind": kind, "text": text} for eid, kind, text in rows]
        (folder / f"{d}.chunks.json").write_text(json.dumps(chunks, ensure_ascii=False))
    report("write", 0, 1)
    (folder / "entries.json").write_text(
        json.dumps([e.to_dict() for e in entries], ensure_ascii=False)
    )


def _prune(out: Path, keep: set[str]) -> None:
    """Remove index folders other than the current and the previous one."""
    for p in out.glob("index-*"):
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


_CACHE: dict[Path, tuple[tuple[int, int], KnowledgeBase]] = {}
_CACHE_LOCK = threading.Lock()


def forget(out_dir: Path | None = None) -> None:
    """Drop the cached index of ``out_dir`` (all of them when None)."""
    with _CACHE_LOCK:
        if out_dir is None:
            _CACHE.clear()
        else:
            _CACHE.pop(Path(out_dir).resolve(), None)


def load(out_dir: Path | None = None) -> KnowledgeBase:
    """The built index under ``out_dir``, loaded once per process and reloaded only when another
    build has replaced ``meta.json``. Raises FileNotFoundError when nothing is built there."""
    out = Path(out_dir or get_settings().kb_dir).resolve()
    st = os.stat(_meta_path(out))  # FileNotFoundError when never built
    stamp = (st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(out)
        if hit and hit[0] == stamp:
            return hit[1]
        for attempt in range(3):
            try:
                kb = _read(out)
                break
            except FileNotFoundError:  # pruned by two builds in a row elsewhere: read again
                if attempt == 2:
                    raise
                time.sleep(0.05)
        _CACHE[out] = (stamp, kb)
        return kb


def _read(out: Path) -> KnowledgeBase:
    meta = json.loads(_meta_path(out).read_text())
    folder = out / meta["current"]
    domains = {}
    for d in DOMAINS:
        chunks = json.loads((folder / f"{d}.chunks.json").read_text())
        domains[d] = DomainIndex.from_index(chunks, faiss.read_index(str(folder / f"{d}.faiss")))
    entries = {
        e["id"]: Entry.from_dict(e) for e in json.loads((folder / "entries.json").read_text())
    }
    return KnowledgeBase(out, meta, domains, entries)
