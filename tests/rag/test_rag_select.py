"""The adaptive selection rule (MMed-RAG ``retrieve_topk_per_image``) and its guards."""

from __future__ import annotations

import pytest

from app.rag.select import adaptive_select


def _hits(*scores):
    return [{"id": f"e{i}", "score": s} for i, s in enumerate(scores)]


def ids(hits):
    return [h["id"] for h in hits]


def test_keeps_hits_whose_ratio_to_the_best_is_under_gamma_best_first():
    hits = _hits(0.40, 0.80, 0.60, 0.53, 0.54)
    # 0.8/0.6 = 1.33 kept; 0.8/0.54 = 1.48 kept; 0.8/0.53 = 1.509 dropped; 0.8/0.4 = 2 dropped
    assert ids(adaptive_select(hits, gamma=1.5, floor=0.0)) == ["e1", "e2", "e4"]


def test_ratio_exactly_gamma_is_dropped():
    assert ids(adaptive_select(_hits(0.9, 0.6), gamma=1.5, floor=0.0)) == ["e0"]


def test_caps_at_k():
    hits = _hits(0.9, 0.89, 0.88, 0.87, 0.86, 0.85, 0.84)
    assert ids(adaptive_select(hits, k=5, floor=0.0)) == ["e0", "e1", "e2", "e3", "e4"]
    assert ids(adaptive_select(hits, k=1, floor=0.0)) == ["e0"]


def test_one_hit_is_kept_and_no_hit_gives_nothing():
    assert ids(adaptive_select(_hits(0.7))) == ["e0"]
    assert adaptive_select([]) == []


def test_ties_are_all_kept_in_a_stable_order():
    hits = [{"id": "b", "score": 0.5}, {"id": "a", "score": 0.5}, {"id": "c", "score": 0.5}]
    assert ids(adaptive_select(hits, floor=0.0)) == ["b", "a", "c"]
    assert ids(adaptive_select(hits, floor=0.0, key=lambda h: h["id"])) == ["a", "b", "c"]
    assert ids(adaptive_select(hits, k=2, floor=0.0, key=lambda h: h["id"])) == ["a", "b"]


def test_all_scores_under_the_floor_give_nothing():
    assert adaptive_select(_hits(0.15, 0.12, 0.1), floor=0.2) == []
    assert ids(adaptive_select(_hits(0.25, 0.19), floor=0.2)) == ["e0"]


def test_non_positive_scores_are_never_selected():
    assert adaptive_select(_hits(0.0, -0.3), floor=0.0) == []
    assert adaptive_select(_hits(-0.1), floor=-1.0) == []
    assert ids(adaptive_select(_hits(0.3, 0.0, -0.2), floor=-1.0, gamma=100)) == ["e0"]


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError):
        adaptive_select(_hits(0.5), gamma=1.0)
    with pytest.raises(ValueError):
        adaptive_select(_hits(0.5), k=0)
