"""Chest radiograph end to end (issue 11): the real DX file of shared/data, sent by dcmtk's
storescu to the SCP, becomes a draft through the default chest rule (technical, then PromptMRG
and Libra as optional engines). The untrained references run and are kept for inspection, and
none of their words reach the draft; `medgate analyze --json` shows its raw result (18 states,
text) marked untrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, shared_file, tool, wait_for
from tests.dimse.conftest import sqlite_medgate, sqlite_scp  # noqa: F401 - shared fixtures
from tests.pipeline.conftest import complete_now, job_states

pytestmark = pytest.mark.slow


def test_a_dx_radiograph_sent_by_storescu_becomes_a_technique_only_draft(
        sqlite_scp, worker_factory):  # noqa: F811 - the imported fixture
    from fastapi.testclient import TestClient

    from app.db.session import session_scope
    from app.main import create_app
    from app.security.keys import create_key

    dx = shared_file("cxr/dx_image.dcm")
    sent = subprocess.run([tool("storescu"), "-aec", sqlite_scp.settings.ae_title, "-aet",
                           "STORESCU", "127.0.0.1", str(sqlite_scp.port), str(dx)],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    import pydicom

    uid = str(pydicom.dcmread(dx, stop_before_pixels=True).StudyInstanceUID)
    worker = worker_factory()
    complete_now()

    def done():
        states = job_states(uid)
        return states if states and all(s in ("done", "failed") for s in states) else None

    try:
        assert wait_for(done, timeout=180, interval=0.5) == ["done"]
    except AssertionError:
        raise AssertionError(f"{job_states(uid)}\n{worker.output()[-3000:]}") from None
    with session_scope() as s:
        _, key = create_key(s, "clinician", "cxr", person_name="Dr Chest")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as api:
        study = api.get(f"/api/v1/studies/{uid}", headers=auth).json()
        assert study["domain"] == "cxr"
        report = api.get(f"/api/v1/reports/{study['reports'][0]['id']}", headers=auth).json()
    assert report["sections"]["technique"], report["sections"]
    assert report["sections"]["findings"] == "" and report["sections"]["impression"] == ""
    assert [r["model"]["family"] for r in report["untrained_results"]] == ["promptmrg", "libra"]
    assert "promptmrg" not in json.dumps(report["sentences"])
    untrained = report["untrained_results"][0]
    assert untrained["trained"] is False


def test_analyze_shows_promptmrgs_untrained_raw_result():
    dx = shared_file("cxr/dx_image.dcm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    out = subprocess.run([sys.executable, "-m", "app.cli", "analyze", str(dx), "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    results = data[0]["results"] if isinstance(data, list) else data["results"]
    (mrg,) = [r for r in results if r["model"]["family"] == "promptmrg"]
    assert mrg["trained"] is False
    assert len(mrg["raw"]["states"]) == 18
    assert isinstance(mrg["raw"]["text"], str)
