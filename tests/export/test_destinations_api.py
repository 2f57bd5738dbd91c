"""Administrators manage destinations under /api/v1/admin/destinations: created (201 with the
destination), listed, changed, deleted; bad input gets a specific 422 and changes nothing; a
second destination of the same name is 409; only admins may; header values are never shown."""

from __future__ import annotations

import pytest

from tests.conftest import configure_env, role_keys

URL = "/api/v1/admin/destinations"


@pytest.fixture
def api(monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from app.db import migrate
    from app.main import create_app

    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade()
    with TestClient(create_app()) as c:
        yield c, role_keys()


def test_destinations_are_created_listed_changed_and_deleted(api):
    client, keys = api
    admin = keys["admin"]
    r = client.post(URL, headers=admin, json={
        "name": "archive", "kind": "stow-rs", "url": "https://pacs.example/dicom-web",
        "headers": {"Authorization": "Bearer secret"}, "states": ["final"]})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{URL}/archive"
    assert r.json()["headers"] == ["Authorization"]  # names only: values may be credentials
    r = client.post(URL, headers=admin, json={
        "name": "review", "kind": "dimse", "ae_title": "REVIEW", "host": "10.0.0.5",
        "port": 104, "domains": ["cxr", "ct"], "states": ["draft", "edited"]})
    assert r.status_code == 201, r.text
    assert [d["name"] for d in client.get(URL, headers=admin).json()["destinations"]] == [
        "archive", "review"]
    r = client.patch(f"{URL}/review", headers=admin, json={"port": 11112, "domains": []})
    assert r.status_code == 200 and r.json()["port"] == 11112 and r.json()["domains"] == []
    assert client.delete(f"{URL}/review", headers=admin).status_code == 200
    assert client.get(f"{URL}/review", headers=admin).status_code == 404
    audit = client.get("/api/v1/admin/audit", headers=admin,
                       params={"action": "destination.create"}).json()
    assert len(audit["events"]) == 2 and "secret" not in str(audit)


@pytest.mark.parametrize("body, says", [
    ({"kind": "ftp"}, "kind must be one of"),
    ({"kind": "dimse", "ae_title": "A", "host": "h"}, "port 1-65535"),
    ({"kind": "dimse", "ae_title": "A\\\\B", "host": "h", "port": 104}, "not an AE title"),
    ({"kind": "dimse", "ae_title": "A", "host": "h", "port": 70000}, "port 1-65535"),
    ({"kind": "stow-rs", "url": "ftp://x"}, "http(s) URL"),
    ({"kind": "stow-rs", "url": "https://x", "states": ["signed"]}, "states ['signed']"),
    ({"kind": "stow-rs", "url": "https://x", "domains": ["mri"]}, "domains ['mri']"),
])
def test_bad_destinations_are_refused_and_change_nothing(api, body, says):
    client, keys = api
    r = client.post(URL, headers=keys["admin"], json={"name": "x", **body})
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "urn:medgate:problem:invalid-destination"
    assert says in r.json()["detail"]
    assert client.get(URL, headers=keys["admin"]).json()["destinations"] == []


def test_names_are_unique_and_only_admins_manage(api):
    client, keys = api
    body = {"name": "a", "kind": "stow-rs", "url": "https://x/dicom-web"}
    assert client.post(URL, headers=keys["admin"], json=body).status_code == 201
    r = client.post(URL, headers=keys["admin"], json=body)
    assert r.status_code == 409 and r.json()["type"].endswith(":destination-exists")
    assert client.post(URL, headers=keys["clinician"], json=body).status_code == 403
    assert client.get(URL, headers=keys["pacs"]).status_code == 403
