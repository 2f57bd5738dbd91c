"""Browser sessions and the viewer's pages, without a browser: sign-in, what a cookie may do
(reads only), expiry, revocation, sign-out, audit events, the generated OHIF configuration and
the report's links into the viewer."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import select

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
COOKIE = "medgate_session"


def _key(keys, role: str) -> str:
    return keys[role]["Authorization"].split(" ", 1)[1]


def _sign_in(client, keys, role: str = "clinician"):
    r = client.post("/api/v1/session", headers=keys[role])
    assert r.status_code == 201, r.text
    assert client.cookies.get(COOKIE)
    return r


def _events(action: str) -> list:
    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as s:
        return [(e.actor, e.outcome, e.resource_id, e.detail) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))]


def _a_report_with_a_region() -> tuple[int, str]:
    """A study with an AI draft whose trained finding rests on a box on one instance."""
    from app.db.models import Patient, Study
    from app.db.session import session_scope
    from app.reports.service import open_report, write_draft

    study_uid = f"1.2.826.0.1.3680043.10.{os.getpid()}.42"
    draft = {"sections": {"findings": [{"text": "Opacity in the right lower zone.",
                                        "evidence": []}]}}
    result = {"model": {"family": "test", "version": "1"}, "trained": True,
              "findings": [{"code": {"scheme": "99MG", "value": "opacity", "meaning": "opacity"},
                            "label": "opacity", "state": "present", "evidence": ["r1"],
                            "where": {}},
                           {"code": {"scheme": "99MG", "value": "normal", "meaning": "normal"},
                            "label": "normal heart size", "state": "present", "evidence": [],
                            "where": {}}],
              "regions": [{"id": "r1", "kind": "box", "instance_uid": "1.2.3.4.5", "frame": 1,
                           "series_uid": "1.2.3.4", "box": [10, 20, 30, 40]}]}
    with session_scope() as s:
        patient = Patient(patient_id="P-VIEWER")
        s.add(patient)
        s.flush()
        study = Study(study_uid=study_uid, patient_fk=patient.id)
        s.add(study)
        s.flush()
        report = open_report(s, study, "cxr")
        write_draft(s, report, draft, [result], author="test-engine", job_id=0)
        return report.id, study_uid


def test_sign_in_sets_a_strict_http_only_expiring_cookie_and_stores_only_a_hash(client, keys):
    from app.db.models import WebSession
    from app.db.session import session_scope

    r = _sign_in(client, keys)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=28800" in cookie and "Secure" not in cookie  # 8 h over plain http
    body = r.json()
    assert body["key"]["role"] == "clinician" and body["person"]["name"] == "Dr Test Clinician"
    token = client.cookies.get(COOKIE)
    with session_scope() as s:
        [row] = s.scalars(select(WebSession)).all()
        assert row.token_hash != token and len(row.token_hash) == 64
        assert timedelta(hours=7.9) < row.expires_at - row.created_at <= timedelta(hours=8)
    [(actor, outcome, _, detail)] = _events("session.created")
    assert actor.startswith("key:") and outcome == "success"
    assert token not in str(detail) and _key(keys, "clinician") not in str(detail)


@SQLITE
def test_secure_cookie_when_the_public_url_is_https(client, keys, monkeypatch):
    from app.config import reset_settings

    monkeypatch.setenv("MEDGATE_PUBLIC_URL", "https://medgate.hospital.example")
    monkeypatch.setenv("MEDGATE_SESSION_HOURS", "2")
    reset_settings()
    r = client.post("/api/v1/session", headers=keys["clinician"])
    assert r.status_code == 201
    assert "Secure" in r.headers["set-cookie"] and "Max-Age=7200" in r.headers["set-cookie"]


@SQLITE
def test_sign_in_refuses_pacs_keys_and_bad_keys_and_audits_the_refusal(client, keys):
    r = client.post("/api/v1/session", headers=keys["pacs"])
    assert r.status_code == 403 and r.json()["type"].endswith(":forbidden")
    assert "pacs" in r.json()["detail"] and COOKIE not in r.headers.get("set-cookie", "")
    r = client.post("/api/v1/session", headers={"Authorization": "Bearer mg_nope_nope"})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    r = client.post("/api/v1/session")
    assert r.status_code == 401 and "form field 'key'" in r.json()["detail"]
    # from the sign-in page: the page again, with the reason, and the same status
    r = client.post("/api/v1/session", data={"key": _key(keys, "pacs"), "next": "/viewer/"})
    assert r.status_code == 403 and "text/html" in r.headers["content-type"]
    assert "cannot sign in at a browser" in r.text
    assert not client.cookies.get(COOKIE)
    refused = [e for e in _events("auth.refused") if e[3].get("via") == "session"]
    assert [e[3]["status"] for e in refused] == [403, 401, 401, 403]
    assert refused[0][0].startswith("key:") and refused[1][0] == "anonymous"
    assert _events("session.created") == []


@SQLITE
def test_admin_keys_may_sign_in_too(client, keys):
    assert _sign_in(client, keys, "admin").json()["key"]["role"] == "admin"


def test_the_cookie_reads_dicomweb_and_the_api(client, keys):
    _sign_in(client, keys)
    assert client.get("/dicomweb/studies").status_code == 200
    assert client.get("/api/v1/reports").status_code == 200
    me = client.get("/api/v1/session").json()
    assert me["via"] == "session" and me["key"]["role"] == "clinician" and me["expires_at"]
    # the cookie gives the key's own rights, no more: a clinician is no admin
    assert client.get("/api/v1/admin/keys").status_code == 403


@SQLITE
def test_the_cookie_never_writes(client, keys):
    _sign_in(client, keys)
    report_id, _ = _a_report_with_a_region()
    for method, path in (("POST", "/dicomweb/studies"), ("POST", "/api/v1/admin/keys"),
                         ("PUT", f"/api/v1/reports/{report_id}"),
                         ("PATCH", f"/api/v1/reports/{report_id}"),
                         ("POST", f"/api/v1/reports/{report_id}/sign"),
                         ("DELETE", "/api/v1/admin/keys/1")):
        r = client.request(method, path, json={})
        assert r.status_code in (401, 405), (method, path, r.text)
        if r.status_code == 401:
            assert "needs the API key" in r.json()["detail"], (method, path)
    # the same write with the Bearer key gets past authentication
    r = client.post(f"/api/v1/reports/{report_id}/sign", headers=keys["clinician"])
    assert r.status_code not in (401, 403)


@SQLITE
def test_the_cookie_counts_only_under_dicomweb_and_api_v1(client, keys):
    _sign_in(client, keys)
    token = client.cookies.get(COOKIE)
    from starlette.requests import Request

    from app.api.deps import _principal
    from app.api.problems import Problem
    from app.db.session import session_scope

    def request(method: str, path: str) -> Request:
        return Request({"type": "http", "method": method, "path": path, "query_string": b"",
                        "headers": [(b"cookie", f"{COOKIE}={token}".encode())]})

    with session_scope() as s:
        assert _principal(request("GET", "/dicomweb/studies"), s).role == "clinician"
        assert _principal(request("HEAD", "/api/v1/reports"), s).role == "clinician"
        for method, path in (("GET", "/metrics-private"), ("GET", "/dicomwebx/studies"),
                             ("POST", "/api/v1/reports")):
            with pytest.raises(Problem) as exc:
                _principal(request(method, path), s)
            assert exc.value.status == 401


def test_expired_and_ended_sessions_are_refused(client, keys):
    from app.db.models import WebSession, utcnow
    from app.db.session import session_scope

    _sign_in(client, keys)
    with session_scope() as s:
        s.scalars(select(WebSession)).one().expires_at = utcnow() - timedelta(seconds=1)
    r = client.get("/dicomweb/studies")
    assert r.status_code == 401 and r.json()["type"].endswith(":session-expired")
    _sign_in(client, keys)
    with session_scope() as s:
        s.scalars(select(WebSession).where(WebSession.revoked_at.is_(None))
                  .order_by(WebSession.id.desc())).first().revoked_at = utcnow()
    assert client.get("/dicomweb/studies").status_code == 401


def test_revoking_the_key_ends_its_sessions(client, keys):
    from app.db.models import WebSession
    from app.db.session import session_scope

    me = _sign_in(client, keys).json()
    assert client.get("/dicomweb/studies").status_code == 200
    r = client.delete(f"/api/v1/admin/keys/{me['key']['id']}", headers=keys["admin"])
    assert r.status_code == 200
    assert client.get("/dicomweb/studies").status_code == 401
    with session_scope() as s:
        assert s.scalars(select(WebSession)).one().revoked_at is not None
    [(actor, _, _, detail)] = _events("session.ended")
    assert detail["reason"] == "key revoked" and actor.startswith("key:")
    # and a revoked key cannot sign in again
    assert client.post("/api/v1/session", headers=keys["clinician"]).status_code == 401


@SQLITE
def test_sign_out_ends_the_session(client, keys):
    _sign_in(client, keys)
    token = client.cookies.get(COOKIE)
    r = client.delete("/api/v1/session")
    assert r.status_code == 204 and 'medgate_session=""' in r.headers["set-cookie"]
    assert not client.cookies.get(COOKIE)
    client.cookies.set(COOKIE, token)  # the old cookie, kept by someone: dead
    assert client.get("/dicomweb/studies").status_code == 401
    [(_, _, _, detail)] = _events("session.ended")
    assert detail["reason"] == "sign-out"
    assert client.delete("/api/v1/session").status_code == 204  # again: nothing to end


@SQLITE
def test_viewer_sends_a_browser_without_a_session_to_sign_in(client, keys, fake_ohif):
    r = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == (
        "/viewer/sign-in?next=%2Fviewer%2Fviewer%3FStudyInstanceUIDs%3D1.2.3")
    page = client.get(r.headers["location"])
    assert page.status_code == 200 and 'action="/api/v1/session"' in page.text
    assert 'name="next" value="/viewer/viewer?StudyInstanceUIDs=1.2.3"' in page.text
    # the sign-in form goes back where the browser was going
    r = client.post("/api/v1/session", follow_redirects=False,
                    data={"key": _key(keys, "clinician"),
                          "next": "/viewer/viewer?StudyInstanceUIDs=1.2.3"})
    assert r.status_code == 303
    assert r.headers["location"] == "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    page = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert page.status_code == 200 and '<div id="root">' in page.text
    # another site is never a place to go next
    for evil in ("https://evil.example/", "//evil.example/viewer", "/viewer\\@evil"):
        r = client.post("/api/v1/session", follow_redirects=False,
                        data={"key": _key(keys, "clinician"), "next": evil})
        assert r.headers["location"] == "/viewer/"


@SQLITE
def test_viewer_serves_the_package_below_viewer(client, keys, fake_ohif):
    _sign_in(client, keys)
    index = client.get("/viewer/").text
    assert 'href="/viewer/assets/favicon.ico"' in index
    assert 'src="/viewer/app.bundle.abc.js"' in index and 'src="/viewer/app-config.js"' in index
    assert 'window.PUBLIC_URL="/viewer/"' in index
    assert "init-service-worker" not in index  # no service worker caching images
    bundle = client.get("/viewer/app.bundle.abc.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert '__webpack_require__.p = "/viewer/";' in bundle.text
    again = client.get("/viewer/app.bundle.abc.js",
                       headers={"If-None-Match": bundle.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get("/viewer/app.bundle.css").text == "@font-face{src:url(/viewer/font.woff2)}"
    wasm = client.get("/viewer/decoder.wasm")
    assert wasm.headers["content-type"] == "application/wasm" and wasm.content.startswith(b"\0asm")
    assert client.get("/viewer/assets/favicon.ico").status_code == 200
    missing = client.get("/viewer/nothing-here.js")
    assert missing.status_code == 404 and missing.json()["type"].endswith(":not-found")
    assert client.get("/viewer/../../../etc/passwd").status_code in (200, 303, 404)
    assert "root:" not in client.get("/viewer/%2e%2e/%2e%2e/etc/passwd").text
    # OHIF's client routes are the entry page
    assert '<div id="root">' in client.get("/viewer/segmentation?StudyInstanceUIDs=1").text


@SQLITE
def test_app_config_points_ohif_at_the_same_origins_dicomweb(client, fake_ohif):
    r = client.get("/viewer/app-config.js")  # no session needed: no patient data in it
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    js = r.text
    assert "config/default.js" not in js  # MedGate's, not the package's
    assert "var root = window.location.origin + \"\" + '/dicomweb';" in js
    assert "source.qidoRoot = source.wadoRoot = source.wadoUriRoot = root;" in js
    assert '"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb"' in js
    for setting in ('"routerBasename": "/viewer"', '"imageRendering": "wadors"',
                    '"thumbnailRendering": "wadors"', '"supportsFuzzyMatching": false',
                    '"defaultDataSourceName": "medgate"', '"dicomUploadEnabled": false'):
        assert setting in js, setting
    assert "http" not in js.replace("httpErrorHandler", "")  # no other server named


@SQLITE
def test_app_config_evaluates_to_the_pages_origin(client, fake_ohif, tmp_path):
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (make viewer installs npm, which brings it)")
    script = tmp_path / "eval.js"
    script.write_text("global.window = {location: {origin: 'https://pacs.example:8443'}};\n"
                      + client.get("/viewer/app-config.js").text
                      + "\nconsole.log(JSON.stringify(window.config));\n")
    config = json.loads(subprocess.run([node, str(script)], capture_output=True, text=True,
                                       check=True, timeout=30).stdout)
    source = config["dataSources"][0]["configuration"]
    assert source["qidoRoot"] == source["wadoRoot"] == source["wadoUriRoot"] == (
        "https://pacs.example:8443/dicomweb")


@SQLITE
def test_viewer_not_installed_says_how_to_install_it(client, tmp_path, monkeypatch):
    from app.config import reset_settings

    monkeypatch.setenv("MEDGATE_VIEWER_DIR", str(tmp_path / "no-viewer-here"))
    reset_settings()
    r = client.get("/viewer/", follow_redirects=False)
    assert r.status_code == 503 and "make viewer" in r.text
    assert "no-viewer-here" in r.text
    assert client.get("/viewer/viewer?StudyInstanceUIDs=1").status_code == 503


def test_report_json_links_the_study_and_the_finding_region_in_the_viewer(client, keys,
                                                                          monkeypatch):
    from urllib.parse import parse_qs, urlsplit

    from app.config import reset_settings

    report_id, study_uid = _a_report_with_a_region()
    _sign_in(client, keys)
    body = client.get(f"/api/v1/reports/{report_id}").json()  # by cookie: a read
    assert body["viewer_url"] == f"/viewer/viewer?StudyInstanceUIDs={study_uid}"
    with_region, without = body["findings"]
    assert "open" not in without
    target = with_region["open"]
    assert (target["region"], target["series_uid"], target["instance_uid"], target["frame"]) == (
        "r1", "1.2.3.4", "1.2.3.4.5", 1)
    query = parse_qs(urlsplit(target["url"]).query)
    assert query == {"StudyInstanceUIDs": [study_uid], "initialSeriesInstanceUID": ["1.2.3.4"],
                     "initialSOPInstanceUID": ["1.2.3.4.5"]}
    monkeypatch.setenv("MEDGATE_PUBLIC_URL", "https://medgate.example/")
    reset_settings()
    body = client.get(f"/api/v1/reports/{report_id}", headers=keys["clinician"]).json()
    assert body["viewer_url"] == (
        f"https://medgate.example/viewer/viewer?StudyInstanceUIDs={study_uid}")
    assert body["findings"][0]["open"]["url"].startswith("https://medgate.example/viewer/")
