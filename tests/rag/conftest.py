"""Fixtures for the retrieval tests: a private data dir, the hashing embedder, the fixture corpus.

Most tests use the ``hashing`` embedder (no model, milliseconds); one module loads the shipped
MiniLM model to check the default path end to end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.config import reset_settings
from app.rag.search import reset as reset_rag

FIXTURE_KB = Path(__file__).parent / "fixture_kb"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rag_env(tmp_path, monkeypatch):
    """MEDGATE_DATA_DIR in tmp, the hashing embedder, and a writable copy of the fixture corpus.

    Yields (corpus_root, kb_dir).
    """
    monkeypatch.setenv("MEDGATE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MEDGATE_EMBEDDER", "hashing")
    corpus = tmp_path / "corpus"
    shutil.copytree(FIXTURE_KB, corpus)
    reset_settings()
    reset_rag()
    yield corpus, (tmp_path / "var" / "kb").resolve()
    reset_settings()
    reset_rag()
