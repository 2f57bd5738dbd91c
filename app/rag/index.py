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

Embedding only what changed: a chunk's vector is looked up by the sha256 of its text in the
index being replaced and in the vectors shipped with the corpus (``<corpus>/.embeddings/``:
``vectors.npy`` and ``manifest.json``, written by ``medgate kb build --save-vectors`` from the
index the build produced, and used only when the manifest names the configured embedder and the
file's sha256 matches). Only chunks found in neither are embedded, so a fresh clone builds its
index in about a second, without loading the model, and an edited entry costs its own chunks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
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
SHIPPED = ".embeddings"  # folder in the corpus with the shipped chunk vectors
RECHECK_SECONDS = 1.0  # how often ``load`` looks whether another process replaced the index

log = logging.getLogger("medgate.rag")

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
    """One domain's chunks: a FAISS index of their vectors and a BM25 of their tokens.

    A small domain (up to ``FULL_SCAN`` chunks) keeps its vectors as a matrix too and scores
    every chunk with one matrix product; larger ones ask FAISS and BM25 for ``CANDIDATES`` each.
    """

    def __init__(self, chunks: list[dict], vectors: np.ndarray | None, dim: int) -> None:
        self.chunks = chunks
        self.dim = dim
        self.faiss = faiss.IndexFlatIP(dim)
        if vectors is not None and len(vectors):
            self.faiss.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.bm25 = BM25()
        self.bm25.extend(c.get("tokens") or tokenize(c["text"]) for c in chunks)
        self._prepare()

    @classmethod
    def from_index(cls, chunks: list[dict], index: faiss.Index) -> DomainIndex:
        obj = cls.__new__(cls)
        obj.chunks, obj.dim, obj.faiss = chunks, index.d, index
        obj.bm25 = BM25()
        obj.bm25.extend(tokenize(c["text"]) for c in chunks)
        obj._prepare()
        return obj

    def _prepare(self) -> None:
        n = len(self.chunks)
        names = sorted({c["entry"] for c in self.chunks})
        self._names = names
        pos = {e: i for i, e in enumerate(names)}
        self._entry_of = np.array([pos[c["entry"]] for c in self.chunks], dtype=np.int64)
        self._matrix = (self.faiss.reconstruct_n(0, n)
                        if 0 < n <= FULL_SCAN and self.faiss.ntotal == n
                        else np.zeros((0, self.dim), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.chunks)

    def vectors(self) -> np.ndarray:
        """All chunk vectors, in chunk order."""
        n = len(self.chunks)
        return self._matrix if len(self._matrix) == n else self.faiss.reconstruct_n(0, n)

    def _vector(self, i: int) -> np.ndarray:
        return self.faiss.reconstruct(int(i))

    def _candidates(
        self, qvec: np.ndarray, qtoks: list[str], fusion: str, w: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(chunk ids ascending, fused, dense, lexical) of the candidate chunks."""
        n = len(self.chunks)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}")
        q = np.ascontiguousarray(qvec.reshape(1, -1), dtype=np.float32)
        lex_all = self.bm25.scores(qtoks)
        if n <= FULL_SCAN and len(self._matrix) == n:
            cand = np.arange(n)
            d = self._matrix @ q[0]
        else:
            dv, di = self.faiss.search(q, CANDIDATES)
            dense = {int(i): float(s) for i, s in zip(di[0], dv[0], strict=True) if i >= 0}
            lex_ids = np.argpartition(-lex_all, CANDIDATES)[:CANDIDATES]
            lex_ids = lex_ids[lex_all[lex_ids] > 0]
            for i in lex_ids:  # lexical-only candidates still need a dense score
                if int(i) not in dense:
                    dense[int(i)] = float(self._vector(int(i)) @ q[0])
            cand = np.array(sorted(set(dense) | {int(i) for i in lex_ids}), dtype=np.int64)
            d = np.array([dense[int(i)] for i in cand], dtype=np.float32)
        lraw = lex_all[cand]
        norm = self.bm25.query_norm(qtoks)
        lex = np.minimum(lraw / norm, 1.0) if norm > 0 else np.zeros_like(lraw)
        return cand, _fuse(d, lex, lraw, fusion, w), d, lex

    def chunk_scores(
        self,
        qvec: np.ndarray,
        qtoks: list[str],
        *,
        fusion: str = DEFAULT_FUSION,
        w: float = DENSE_WEIGHT,
    ) -> list[ChunkHit]:
        """Fused scores of the candidate chunks (all of them in a small domain)."""
        if not self.chunks:
            return []
        cand, fused, d, lex = self._candidates(qvec, qtoks, fusion, w)
        return [
            ChunkHit(self.chunks[c]["entry"], float(f), float(dd), float(ll), int(c))
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
        """Entries ranked by their best chunk, best first (ties broken by entry id; an entry's
        tied chunks by chunk order)."""
        if not self.chunks:
            return []
        cand, fused, d, lex = self._candidates(qvec, qtoks, fusion, w)
        ent = self._entry_of[cand]
        # Best chunk per entry: by score, then chunk order; entries by score, then id (names
        # are sorted, so their position orders them by id).
        order = np.lexsort((cand, -fused))
        _, first = np.unique(ent[order], return_index=True)
        best = order[first]
        ranked = best[np.lexsort((ent[best], -fused[best]))]
        if limit:
            ranked = ranked[:limit]
        return [
            ChunkHit(self._names[ent[j]], float(fused[j]), float(d[j]), float(lex[j]),
                     int(cand[j]))
            for j in ranked
        ]


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
    embedded: int = 0  # chunks run through the embedder
    reused: int = 0  # chunks whose vector came from the previous index or the shipped vectors


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

    Vectors of unchanged chunks are taken from the previous index and from the vectors shipped
    with the corpus; ``force`` embeds every chunk again and ignores both.
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
        cache = VectorCache(emb_name) if force else VectorCache.gather(emb_name, root, out, meta)
        folder = f"index-{chash[:12]}-{uuid.uuid4().hex[:8]}"
        embedded, reused, dim = _write_index(out / folder, entries, emb, cache, report)
        counts = {d: sum(1 for e in entries if e.domain == d) for d in DOMAINS}
        new_meta = {
            "format": FORMAT,
            "corpus_hash": chash,
            "corpus_root": str(root),
            "embedder": emb.name,
            "dim": dim,
            "current": folder,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "domains": {d: {"entries": counts[d]} for d in DOMAINS},
            "embedded": embedded,
            "reused": reused,
        }
        _write_json(_meta_path(out), new_meta)
        _prune(out, keep={folder, (meta or {}).get("current", "")})
        report("write", 1, 1)
    forget(out)
    return BuildResult(True, out, chash, emb.name, counts, time.perf_counter() - t0,
                       embedded, reused)


def text_key(text: str) -> str:
    """What a chunk's vector is cached under: the sha256 of its text."""
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class VectorCache:
    """Chunk vectors of one embedder by text key, gathered from earlier builds."""

    def __init__(self, embedder: str) -> None:
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}
        self.dim: int | None = None
        self.sources: list[str] = []

    def add(self, keys: list[str], vectors: np.ndarray, source: str) -> None:
        if len(keys) != len(vectors) or (self.dim is not None and vectors.shape[1] != self.dim):
            return
        self.dim = int(vectors.shape[1])
        for k, v in zip(keys, vectors, strict=True):
            self.vectors.setdefault(k, v)
        self.sources.append(source)

    @classmethod
    def gather(cls, embedder: str, root: Path, out: Path, meta: dict | None) -> VectorCache:
        cache = cls(embedder)
        if meta and meta.get("embedder") == embedder and meta.get("current"):
            try:  # the index being replaced
                kb = _read(out)
                for d in DOMAINS:
                    idx = kb.domains[d]
                    if len(idx):
                        cache.add([text_key(c["text"]) for c in idx.chunks], idx.vectors(),
                                  f"index {meta['current']}")
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                log.warning("previous index in %s not reused: %s", out, exc)
        keys, vectors, why = read_shipped(root, embedder)
        if vectors is not None:
            cache.add(keys, vectors, f"shipped {root / SHIPPED}")
        elif why:
            log.warning("shipped vectors not used: %s", why)
        return cache


def read_shipped(root: Path, embedder: str) -> tuple[list[str], np.ndarray | None, str]:
    """(keys, vectors, "") of the vectors shipped with the corpus for ``embedder``, or
    ([], None, why not). Vectors whose file does not match the manifest's sha256 are refused."""
    folder = Path(root) / SHIPPED
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return [], None, ""
    except (OSError, json.JSONDecodeError) as exc:
        return [], None, f"{folder / 'manifest.json'} is unreadable: {exc}"
    if manifest.get("format") != FORMAT or manifest.get("embedder") != embedder:
        return [], None, ""  # vectors of another embedder or chunking: nothing to use
    path = folder / "vectors.npy"
    try:
        digest = _file_sha256(path)
    except OSError as exc:
        return [], None, f"{path}: {exc}"
    if digest != manifest.get("sha256"):
        return [], None, f"{path} does not match its manifest's sha256"
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return [], None, f"{path}: {exc}"
    keys = manifest.get("keys", [])
    if vectors.ndim != 2 or len(keys) != len(vectors) or vectors.shape[1] != manifest.get("dim"):
        return [], None, f"{path} does not have the manifest's shape"
    return keys, vectors.astype(np.float32, copy=False), ""


def save_vectors(out_dir: Path | None = None, corpus_root: Path | None = None) -> Path:
    """Write the current index's chunk vectors into ``<corpus>/.embeddings/`` (what a fresh
    clone's build reuses). Returns the folder."""
    out = Path(out_dir or get_settings().kb_dir).resolve()
    kb = load(out)
    root = Path(corpus_root or kb.meta.get("corpus_root") or default_corpus_root())
    keys: list[str] = []
    vecs = []
    for d in DOMAINS:
        idx = kb.domains[d]
        keys += [text_key(c["text"]) for c in idx.chunks]
        if len(idx):
            vecs.append(idx.vectors())
    matrix = np.ascontiguousarray(np.vstack(vecs) if vecs else np.zeros((0, 0)), np.float32)
    folder = root / SHIPPED
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".vectors.{uuid.uuid4().hex}.npy"
    np.save(tmp, matrix, allow_pickle=False)
    os.replace(tmp, folder / "vectors.npy")
    _write_json(folder / "manifest.json", {
        "format": FORMAT,
        "embedder": kb.meta["embedder"],
        "dim": int(matrix.shape[1]),
        "rows": len(keys),
        "dtype": "float32",
        "corpus_hash": kb.meta["corpus_hash"],
        "sha256": _file_sha256(folder / "vectors.npy"),
        "keys": keys,
    })
    return folder


def _write_index(
    folder: Path, entries: list[Entry], emb: Embedder, cache: VectorCache, report: Progress
) -> tuple[int, int, int]:
    """Write the index files; returns (chunks embedded, chunks reused, dimension)."""
    folder.mkdir(parents=True)
    per_domain = {d: [e for e in entries if e.domain == d] for d in DOMAINS}
    texts = {
        d: [(e.id, kind, text) for e in es for kind, text in entry_chunks(e)]
        for d, es in per_domain.items()
    }
    total = sum(len(t) for t in texts.values())
    keys = {d: [text_key(t) for _, _, t in rows] for d, rows in texts.items()}
    missing = [(d, i) for d in DOMAINS for i, k in enumerate(keys[d]) if k not in cache.vectors]
    # The embedder (and a model) is needed only when something is missing.
    dim = emb.dim if missing or cache.dim is None else cache.dim
    if cache.dim is not None and cache.dim != dim:
        cache = VectorCache(cache.embedder)
        missing = [(d, i) for d in DOMAINS for i in range(len(keys[d]))]
    fresh: dict[tuple[str, int], np.ndarray] = {}
    done = total - len(missing)
    report("embed", done, total)
    for i in range(0, len(missing), 32):
        batch = missing[i : i + 32]
        vecs = emb.embed([texts[d][j][2] for d, j in batch])
        fresh.update(zip(batch, vecs, strict=True))
        done += len(batch)
        report("embed", done, total)
    for d in DOMAINS:
        rows = texts[d]
        index = faiss.IndexFlatIP(dim)
        if rows:
            vecs = np.stack([fresh[(d, j)] if (d, j) in fresh else cache.vectors[keys[d][j]]
                             for j in range(len(rows))])
            index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        faiss.write_index(index, str(folder / f"{d}.faiss"))
        chunks = [{"entry": eid, "kind": kind, "text": text} for eid, kind, text in rows]
        (folder / f"{d}.chunks.json").write_text(json.dumps(chunks, ensure_ascii=False))
    report("write", 0, 1)
    (folder / "entries.json").write_text(
        json.dumps([e.to_dict() for e in entries], ensure_ascii=False)
    )
    return len(missing), total - len(missing), dim


def _prune(out: Path, keep: set[str]) -> None:
    """Remove index folders other than the current and the previous one."""
    for p in out.glob("index-*"):
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


_CACHE: dict[Path, tuple[tuple[int, int], float, KnowledgeBase]] = {}
_CACHE_LOCK = threading.Lock()
READS = 0  # index reads from disk in this process (the files, not the cache)


def forget(out_dir: Path | None = None) -> None:
    """Drop the cached index of ``out_dir`` (all of them when None)."""
    with _CACHE_LOCK:
        if out_dir is None:
            _CACHE.clear()
        else:
            _CACHE.pop(Path(out_dir).resolve(), None)


def load(out_dir: Path | None = None) -> KnowledgeBase:
    """The built index under ``out_dir``, loaded once per process and reloaded only when another
    build has replaced ``meta.json`` (looked at, with one ``stat``, at most every
    ``RECHECK_SECONDS``). Raises FileNotFoundError when nothing is built there."""
    out = Path(out_dir or get_settings().kb_dir).resolve()
    now = time.monotonic()
    hit = _CACHE.get(out)
    if hit and now - hit[1] < RECHECK_SECONDS:
        return hit[2]
    st = os.stat(_meta_path(out))  # FileNotFoundError when never built
    stamp = (st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(out)
        if hit and hit[0] == stamp:
            _CACHE[out] = (stamp, now, hit[2])
            return hit[2]
        for attempt in range(3):
            try:
                kb = _read(out)
                break
            except FileNotFoundError:  # pruned by two builds in a row elsewhere: read again
                if attempt == 2:
                    raise
                time.sleep(0.05)
        _CACHE[out] = (stamp, now, kb)
        return kb


def _read(out: Path) -> KnowledgeBase:
    global READS
    READS += 1
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
