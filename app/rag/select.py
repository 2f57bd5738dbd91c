"""Adaptive context selection, the rule of MMed-RAG's ``retrieve_topk_per_image``.

Sort the hits by score, best first; keep hit *i* while ``best / score_i < gamma``; keep at most
``k``. Two guards the published code lacks: a best score that is not positive selects nothing
(the ratio has no meaning), and hits under an absolute ``floor`` are dropped, so a query that
matches nothing well returns nothing rather than the least bad entries.

The floor is on the fused score scale of ``app.rag.index`` (0..1, see docs/knowledge.md for how
its value was chosen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

DEFAULT_K = 5
DEFAULT_GAMMA = 1.5
DEFAULT_FLOOR = 0.2

H = TypeVar("H")


def adaptive_select(
    hits: Sequence[H],
    *,
    score=lambda h: h["score"],  # noqa: ANN001 - a key function, like sorted()
    k: int = DEFAULT_K,
    gamma: float = DEFAULT_GAMMA,
    floor: float = DEFAULT_FLOOR,
    key=None,  # noqa: ANN001 - tie-break key, e.g. the entry id
) -> list[H]:
    """The hits kept by the adaptive rule, best first.

    Ties keep a stable order (by ``key`` when given, else their input order). ``gamma`` must be
    above 1 (at 1 nothing could pass ``best / s < gamma``) and ``k`` at least 1.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if gamma <= 1.0:
        raise ValueError("gamma must be greater than 1")
    order = sorted(
        range(len(hits)),
        key=lambda i: (-float(score(hits[i])), key(hits[i]) if key else i),
    )
    ranked = [hits[i] for i in order]
    if not ranked:
        return []
    best = float(score(ranked[0]))
    if best <= 0.0 or best < floor:
        return []
    kept = []
    for h in ranked:
        s = float(score(h))
        if s <= 0.0 or s < floor or best / s >= gamma:
            break  # sorted: every later hit fails too
        kept.append(h)
        if len(kept) == k:
            break
    return kept
