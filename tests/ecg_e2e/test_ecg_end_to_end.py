"""ECG end to end: a DICOM 12-lead ECG and an uploaded WFDB record each become a draft with
measurements, statements and knowledge citations; `medgate analyze` states the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, configure_env, wait_for
from tests.pipeline.conftest import ECG, complete_now, job_states


@pytest.fixture
def ecg_env(monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from app.db import migrate
    from app.db.session import session_scope
    from app.main import create_app
    from app.security.keys import create_key

    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade()
    with session_scope() as s:
        keys = {r: {"Authorization":
                    f"Bearer {create_key(s, r, r, person_name='Dr Test')[1]}"}
                for r in ("pacs", "clinician", "admin")}
    with TestClient(create_app()) as c:
        yield c, keys


def _draft(api, keys, uid, worker):
    def done():
        states = job_states(uid)
        return states if states and all(s in ("done", "failed") for s in states) else None

    try:
        assert wait_for(done, timeout=120, interval=0.3) == ["done"]
    except AssertionError:
        raise AssertionError(f"{job_states(uid)}\n{worker.output()[-3000:]}") from None
    study = api.get(f"/api/v1/studies/{uid}", headers=keys["clinician"]).json()
    rid = study["reports"][0]["id"]
    return api.get(f"/api/v1/reports/{rid}", headers=keys["clinician"]).json()


def _assert_grounded(report):
    names = {m["name"] for m in report["measurements"]}
    assert {"heart_rate", "pr_interval", "qrs_duration", "qt_interval", "qtc_bazett",
            "qrs_axis", "st_deviation"} <= names
    st = [m for m in report["measurements"] if m["name"] == "st_deviation"]
    assert len(st) >= 12 and all(m["where"]["lead"] for m in st)
    assert report["findings"], "the rules stated nothing"
    sentences = [s for sec in report["sentences"].values() for s in sec]
    assert sentences and all(s["evidence"] for s in sentences)
    cited = {e["ref"] for s in sentences for e in s["evidence"] if e["kind"] == "knowledge"}
    assert cited and all(c.startswith("ecg-") for c in cited)
    for e in (e for s in sentences for e in s["evidence"] if e["kind"] == "knowledge"):
        assert e["detail"].get("title"), e
    # the untrained MERL reference is kept for inspection and never reaches the text
    assert [r["model"]["family"] for r in report["untrained_results"]] == ["merl"]
    assert "merl" not in json.dumps(report["sentences"])


def test_dicom_ecg_and_uploaded_wfdb_become_grounded_drafts(ecg_env, worker_factory,
                                                            shared_data):
    api, keys = ecg_env
    worker = worker_factory()
    from app.db.session import session_factory
    from app.dicom.store import store_path

    uid = store_path(session_factory(), ECG, source="test").study_uid
    complete_now()
    report = _draft(api, keys, uid, worker)
    _assert_grounded(report)
    codes = {f["code"]["value"] for f in report["findings"]}
    assert "ecg-sinus-rhythm" in codes

    wfdb = shared_data / "ecg" / "wfdb"
    # a PTB record: 12 standard leads in .dat and the Frank leads in .xyz
    files = [("header", ("s0010_re.hea", (wfdb / "s0010_re.hea").read_bytes())),
             ("signal", ("s0010_re.dat", (wfdb / "s0010_re.dat").read_bytes())),
             ("signal", ("s0010_re.xyz", (wfdb / "s0010_re.xyz").read_bytes()))]
    r = api.post("/api/v1/ecg", headers=keys["pacs"], files=files,
                 data={"patient_id": "PTB-0010", "patient_name": "Test^Ptb"})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["created"] and len(up["leads"]) >= 12
    complete_now()
    uploaded = _draft(api, keys, up["study_uid"], worker)
    _assert_grounded(uploaded)
    study = api.get(f"/api/v1/studies/{up['study_uid']}", headers=keys["clinician"]).json()
    assert study["patient_id"] == "PTB-0010" and study["domain"] == "ecg"

    # the offline CLI states the same for the DICOM ECG
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    out = subprocess.run([sys.executable, "-m", "app.cli", "analyze", str(ECG), "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    offline = json.loads(out.stdout)[0]
    measured = [r for r in offline["results"] if r["model"]["family"] == "ecg-measure"][0]
    assert {f["code"]["value"] for f in measured["findings"]} == codes
    assert offline["draft"]["sections"]["impression"] == report["sentences"]["impression"]


def test_bad_ecg_upload_is_refused_and_stores_nothing(ecg_env, shared_data):
    api, keys = ecg_env
    wfdb = shared_data / "ecg" / "wfdb"
    with open(wfdb / "s0010_re.hea", "rb") as h:
        r = api.post("/api/v1/ecg", headers=keys["pacs"],
                     files={"header": ("s0010_re.hea", h), "signal": ("x.dat", b"\x00" * 10)})
    assert r.status_code == 422 and "upload them too" in r.json()["detail"]
    with open(wfdb / "test01_00s.hea", "rb") as h:
        r = api.post("/api/v1/ecg", headers=keys["pacs"],
                     files={"header": ("test01_00s.hea", h), "signal": ("x.dat", b"\x00" * 10)})
    assert r.status_code == 422 and r.json()["type"].endswith("invalid-ecg-record")
    r = api.post("/api/v1/ecg", headers=keys["pacs"],
                 files={"header": ("a.hea", b"not a header"), "signal": ("a.dat", b"")})
    assert r.status_code == 422
    assert api.get("/api/v1/studies", headers=keys["clinician"]).json()["total"] == 0
    from app.config import get_settings

    leftovers = [p for p in get_settings().store_dir.rglob("*") if p.is_file()]
    assert leftovers == []
    assert api.post("/api/v1/ecg", headers=keys["clinician"], files={}).status_code == 422
    assert api.post("/api/v1/ecg").status_code == 401
