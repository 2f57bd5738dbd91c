"""The bad-input corpus over STOW-RS (issue 10): every broken file and body gets its specific
status, and leaves no file (not even a temporary one) and no row. SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import pytest

from tests.badinput.corpus import BODY_CASES, BOMB_LIMIT, FILE_CASES, ok_part
from tests.dicomweb.conftest import multipart, row_counts, stored_files, stow_headers

FAILED, FAILURE_REASON = "00081198", "00081197"
NOTHING = {"patient": 0, "study": 0, "series": 0, "instance": 0}


def _reasons(body: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in body.get(FAILED, {}).get("Value", [])]


@pytest.fixture
def corpus_client(medgate, monkeypatch):
    from fastapi.testclient import TestClient

    from app.config import reset_settings
    from app.main import create_app

    monkeypatch.setenv("MEDGATE_MAX_INFLATED_BYTES", str(BOMB_LIMIT))
    reset_settings()
    with TestClient(create_app()) as client:
        yield client


def test_every_broken_file_gets_its_status_and_leaves_nothing(corpus_client, keys, medgate):
    assert len(FILE_CASES) + len(BODY_CASES) >= 80
    wrong: dict[str, object] = {}
    for case in FILE_CASES:
        r = corpus_client.post("/dicomweb/studies", content=multipart([case.build()]),
                               headers=stow_headers(keys["pacs"]))
        want_http = 400 if 0xC000 <= case.stow <= 0xCFFF else 409
        got = (r.status_code, _reasons(r.json()) if r.status_code < 500 else r.text)
        if got != (want_http, [case.stow]):
            wrong[case.name] = got
        leftovers = stored_files(medgate.store_dir)
        if leftovers or row_counts() != NOTHING:
            wrong[f"{case.name}: left behind"] = (leftovers, row_counts())
    assert not wrong, {k: (v if not isinstance(v, tuple) else
                           (v[0], [hex(c) for c in v[1]] if isinstance(v[1], list) else v[1]))
                       for k, v in wrong.items()}
    # the instance every case was broken from is itself accepted
    r = corpus_client.post("/dicomweb/studies", content=multipart([ok_part()]),
                           headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text


def test_every_broken_body_gets_its_status_and_leaves_nothing(corpus_client, keys, medgate,
                                                              monkeypatch, caplog):
    from app.config import reset_settings

    wrong: dict[str, object] = {}
    for case in BODY_CASES:
        for key, value in case.env.items():
            monkeypatch.setenv(f"MEDGATE_{key}", value)
        reset_settings()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="app.dicom.stow"):
            r = corpus_client.post("/dicomweb/studies", content=case.build(),
                                   headers={**keys["pacs"], "Content-Type": case.content_type,
                                            "Accept": "application/dicom+json"})
        for key in case.env:
            monkeypatch.delenv(f"MEDGATE_{key}")
        if r.status_code != case.status:
            wrong[case.name] = (r.status_code, r.text[:200])
        elif case.part is not None and set(_reasons(r.json())) != {case.part}:
            wrong[case.name] = _reasons(r.json())
        elif case.part is None and not r.headers["content-type"].startswith(
                "application/problem+json"):
            wrong[case.name] = r.headers["content-type"]
        # one log line per request, however many parts were refused
        if len([m for m in caplog.records if m.name == "app.dicom.stow"]) > 1:
            wrong[f"{case.name}: log lines"] = len(caplog.records)
        if stored_files(medgate.store_dir) or row_counts() != NOTHING:
            wrong[f"{case.name}: left behind"] = (stored_files(medgate.store_dir), row_counts())
    reset_settings()
    assert not wrong, wrong


def test_a_refused_part_does_not_stop_the_good_ones(corpus_client, keys, medgate):
    """A request mixing good and broken parts stores the good ones (202, PS3.18 10.5.3)."""
    broken = [c.build() for c in FILE_CASES[:10]]
    r = corpus_client.post("/dicomweb/studies", content=multipart([ok_part(), *broken,
                                                                   ok_part()]),
                           headers=stow_headers(keys["pacs"]))
    assert r.status_code == 202, r.text
    assert len(_reasons(r.json())) == 10
    assert row_counts()["instance"] == 2
    assert len([p for p in stored_files(medgate.store_dir) if p.suffix == ".dcm"]) == 2
