"""Lexical retrieval: a clinical tokenizer and a small incremental Okapi BM25.

The tokenizer lower-cases and keeps compound clinical tokens intact ("laa-950", "t2/flair",
"v1", "qtc", "1.5") while also emitting their parts ("laa", "950"), so that a query for
"LAA-950" matches the compound exactly and a query for "LAA" still matches. A light plural
strip folds "nodules" onto "nodule".

``BM25`` accepts documents one at a time (the case index grows while the service runs); the
inverse document frequency is computed at query time from the current counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[-/.+&][a-z0-9]+)*")
_SPLIT_RE = re.compile(r"[-/.+&]")
STOPWORDS = frozenset(
    """a an and are as at be been being by for from has have in into is it its of on or
    such that the their then there these this those to was were which with within what when
    where who whom whose how does do did can could should would may might shall will""".split()
)
# Words ending in "s" that are not plurals (the plural strip must leave them alone).
_KEEP_S = ("ss", "us", "is", "ys", "os")


def _fold(tok: str) -> str:
    if tok.isalpha() and len(tok) > 4 and tok.endswith("s") and not tok.endswith(_KEEP_S):
        if tok.endswith("ies") and len(tok) > 5:
            return tok[:-3] + "y"
        return tok[:-1]
    return tok


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens; compounds are kept whole and followed by their parts."""
    out: list[str] = []
    for m in _TOKEN_RE.finditer(text.lower()):
        tok = m.group(0)
        if tok in STOPWORDS:
            continue
        out.append(_fold(tok))
        if _SPLIT_RE.search(tok) and not _is_number(tok):
            out.extend(_fold(p) for p in _SPLIT_RE.split(tok) if p and p not in STOPWORDS)
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


class BM25:
    """Okapi BM25 over token lists, with documents added incrementally."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._post: dict[str, tuple[list[int], list[int]]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lens: list[int] = []
        self._lens_arr: np.ndarray | None = None
        self._total = 0

    def __len__(self) -> int:
        return len(self._lens)

    def add(self, tokens: Sequence[str]) -> int:
        """Index one document; returns its row number."""
        doc = len(self._lens)
        counts: dict[str, int] = {}
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            docs, tfs = self._post.setdefault(t, ([], []))
            docs.append(doc)
            tfs.append(c)
            self._arrays.pop(t, None)
        self._lens.append(len(tokens))
        self._total += len(tokens)
        self._lens_arr = None
        return doc

    def extend(self, docs: Iterable[Sequence[str]]) -> None:
        for d in docs:
            self.add(d)

    def idf(self, term: str) -> float:
        """Non-negative BM25 idf (the "+1" form), so a match never lowers a score."""
        n = len(self._lens)
        df = len(self._post[term][0]) if term in self._post else 0
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def query_norm(self, query_tokens: Sequence[str]) -> float:
        """Sum of idf over the distinct query terms: what a document holding each term once at
        average length scores. Dividing by it puts scores on a rough 0..1 scale per query."""
        return sum(self.idf(t) for t in set(query_tokens))

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for the query (float32 array, one per row)."""
        n = len(self._lens)
        acc = np.zeros(n, dtype=np.float32)
        if n == 0:
            return acc
        if self._lens_arr is None:
            self._lens_arr = np.asarray(self._lens, dtype=np.float32)
        avgdl = max(self._total / n, 1e-9)
        k1, b = self.k1, self.b
        for t in set(query_tokens):
            if t not in self._post:
                continue
            arr = self._arrays.get(t)
            if arr is None:
                docs, tfs = self._post[t]
                arr = (np.asarray(docs, dtype=np.int64), np.asarray(tfs, dtype=np.float32))
                self._arrays[t] = arr
            docs_a, tfs_a = arr
            denom = tfs_a + k1 * (1.0 - b + b * self._lens_arr[docs_a] / avgdl)
            acc[docs_a] += self.idf(t) * tfs_a * (k1 + 1.0) / denom
        return acc
