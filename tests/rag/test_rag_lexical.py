"""The clinical tokenizer and the incremental BM25."""

from __future__ import annotations

import numpy as np

from app.rag.lexical import BM25, tokenize


def test_tokenizer_keeps_clinical_compounds_whole_and_also_splits_them():
    toks = tokenize("LAA-950 of 14%; QTc 512 ms in V1-V3; T2/FLAIR; H&E; 1.5 cm")
    assert "laa-950" in toks and "laa" in toks and "950" in toks
    assert "qtc" in toks and "v1-v3" in toks and "v1" in toks and "v3" in toks
    assert "t2/flair" in toks and "flair" in toks
    assert "h&e" in toks
    assert "1.5" in toks and "1" not in toks  # numbers are not split at the point


def test_tokenizer_lowercases_drops_stopwords_and_folds_plurals():
    assert tokenize("The Nodules of the Lungs") == ["nodule", "lung"]
    assert tokenize("stenosis thorax") == ["stenosis", "thorax"]  # not plurals


def test_bm25_ranks_the_matching_document_first_and_grows_incrementally():
    bm = BM25()
    bm.add(tokenize("pleural effusion blunting costophrenic angle"))
    bm.add(tokenize("pneumothorax visceral pleural line"))
    s = bm.scores(tokenize("pneumothorax"))
    assert s.argmax() == 1 and s[0] == 0
    bm.add(tokenize("tension pneumothorax mediastinal shift pneumothorax"))
    s = bm.scores(tokenize("pneumothorax shift"))
    assert len(s) == 3 and s.argmax() == 2
    assert np.all(bm.scores(tokenize("absent words")) == 0)


def test_bm25_query_norm_puts_a_full_single_match_near_one():
    bm = BM25()
    for text in ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]:
        bm.add(tokenize(text))
    q = tokenize("alpha beta")
    assert abs(bm.scores(q)[0] / bm.query_norm(q) - 1.0) < 1e-5
    assert bm.idf("unknown") > bm.idf("alpha") > 0
