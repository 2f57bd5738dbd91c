"""The knowledge API: search answers with entry id, title, score and passage; entries open."""

from __future__ import annotations

import pytest


@pytest.fixture
def kb_client(monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from app.db import migrate
    from app.db.session import session_scope
    from app.main import create_app
    from app.rag.search import reset
    from app.security.keys import create_key
    from tests.conftest import configure_env

    # The model-free embedder keeps the index build to a second; BM25 still finds the terms.
    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}",
                  embedder="hashing")
    reset()
    migrate.upgrade()
    with session_scope() as s:
        keys = {r: {"Authorization":
                    f"Bearer {create_key(s, r, r, person_name='Dr Test')[1]}"}
                for r in ("pacs", "clinician")}
    with TestClient(create_app()) as c:
        yield c, keys
    reset()


def test_search_finds_entries_by_abbreviation_and_domain(kb_client):
    c, keys = kb_client
    r = c.get("/api/v1/kb/search", params={"q": "LBBB QRS 140 ms broad notched R in V6",
                                           "domain": "ecg", "k": 3},
              headers=keys["clinician"])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert 1 <= len(results) <= 3
    assert results[0]["id"] == "ecg-lbbb"
    assert set(results[0]) >= {"id", "title", "score", "passage"}
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    # without a domain, the text tells it
    r = c.get("/api/v1/kb/search", params={"q": "Fleischner follow-up for a 7 mm solid nodule"},
              headers=keys["clinician"]).json()
    assert r["domain"] == "ct" and r["results"][0]["id"].startswith("ct-")


def test_entries_open_and_errors_are_problems(kb_client):
    c, keys = kb_client
    entry = c.get("/api/v1/kb/entries/ecg-atrial-fibrillation", headers=keys["clinician"])
    assert entry.status_code == 200
    body = entry.json()
    assert body["title"] == "Atrial fibrillation" and "AF" in body["synonyms"]
    assert body["sections"]["Criteria"]
    assert c.get("/api/v1/kb/entries/ecg-nope", headers=keys["clinician"]).status_code == 404
    assert c.get("/api/v1/kb/search", params={"q": "x", "domain": "brain"},
                 headers=keys["clinician"]).status_code == 422
    assert c.get("/api/v1/kb/search", params={"q": "x"}).status_code == 401
    assert c.get("/api/v1/kb/search", params={"q": "x"}, headers=keys["pacs"]).status_code == 403
