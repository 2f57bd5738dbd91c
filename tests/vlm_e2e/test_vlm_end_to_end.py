"""Libra and MedRegA end to end (issue 12): two chest radiographs of one patient a year apart,
sent by dcmtk's storescu, run through the default chest rule (technical, PromptMRG, Libra). The
later study's Libra result used the earlier study's image as its prior; the earlier one had no
prior, so the current image stood in and the comparison guard ran. A clinician then asks for
MedRegA on the later study, which runs its grounded report as an optional engine. All three
learned families are untrained references here: kept for inspection, never report text."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest

from models.vlm.libra.comparison import comparison_term
from tests.conftest import cr_from_png, shared_file, tool, wait_for
from tests.dimse.conftest import sqlite_medgate, sqlite_scp  # noqa: F401 - shared fixtures
from tests.pipeline.conftest import complete_now, job_states

pytestmark = pytest.mark.slow
PATIENT = "LIBRA-E2E-1"


def chest_cr(png: Path, out: Path, date: str) -> Path:
    return cr_from_png(png, out, patient=PATIENT, date=date, name="Test^Libra")


def _send(scp, path: Path) -> str:
    sent = subprocess.run([tool("storescu"), "-aec", scp.settings.ae_title, "-aet", "STORESCU",
                           "127.0.0.1", str(scp.port), str(path)], capture_output=True, text=True,
                          timeout=60)
    assert sent.returncode == 0, sent.stderr
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _wait_done(uid: str, worker, n: int = 1) -> None:
    def done():
        states = job_states(uid)
        return states if len(states) >= n and all(s in ("done", "failed") for s in states) \
            else None

    try:
        assert set(wait_for(done, timeout=240, interval=0.5)) == {"done"}
    except AssertionError:
        raise AssertionError(f"{job_states(uid)}\n{worker.output()[-3000:]}") from None


def _untrained(api, auth, uid: str, family: str) -> dict:
    study = api.get(f"/api/v1/studies/{uid}", headers=auth).json()
    report = api.get(f"/api/v1/reports/{study['reports'][0]['id']}", headers=auth).json()
    assert family not in json.dumps(report["sentences"])  # untrained: never report text
    (result,) = [r for r in report["untrained_results"] if r["model"]["family"] == family]
    return result


def test_libra_reads_the_prior_the_platform_found_and_medrega_runs_on_request(
        sqlite_scp, worker_factory, tmp_path):  # noqa: F811 - the imported fixture
    from fastapi.testclient import TestClient

    from app.db.session import session_scope
    from app.main import create_app
    from app.security.keys import create_key

    earlier = chest_cr(shared_file("cxr/00027426_000.png"), tmp_path / "prior.dcm", "20240301")
    later = chest_cr(shared_file("cxr/00000001_000.png"), tmp_path / "current.dcm", "20250110")
    worker = worker_factory()
    prior_uid = _send(sqlite_scp, earlier)
    complete_now()
    _wait_done(prior_uid, worker)
    current_uid = _send(sqlite_scp, later)
    complete_now()
    _wait_done(current_uid, worker)

    with session_scope() as s:
        _, key = create_key(s, "clinician", "cxr", person_name="Dr Chest")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as api:
        now = _untrained(api, auth, current_uid, "libra")
        assert now["raw"]["dummy_prior"] is False
        assert now["raw"]["prior"]["study_uid"] == prior_uid
        assert now["raw"]["prior"]["date"] == "2024-03-01"
        before = _untrained(api, auth, prior_uid, "libra")
        assert before["raw"]["dummy_prior"] is True and before["raw"]["prior"] is None
        assert before["raw"]["comparison_guard"]["applied"] is True
        assert all(comparison_term(s["text"]) is None
                   for section in before["text"] for s in section["sentences"])
        # the technique says which comparison was made, from the technical engine's facts
        study = api.get(f"/api/v1/studies/{prior_uid}", headers=auth).json()
        report = api.get(f"/api/v1/reports/{study['reports'][0]['id']}", headers=auth).json()
        assert "Comparison: none" in json.dumps(report["sections"]["technique"])

        bad = api.post(f"/api/v1/studies/{current_uid}/reanalyze", headers=auth,
                       json={"engines": ["medregga"]})
        assert bad.status_code == 422 and "medrega" in bad.json()["detail"]
        asked = api.post(f"/api/v1/studies/{current_uid}/reanalyze", headers=auth,
                         json={"engines": ["medrega"]})
        assert asked.status_code == 202, asked.text
        _wait_done(current_uid, worker, n=2)
        region = _untrained(api, auth, current_uid, "medrega")
        assert region["raw"]["task"] == "grounded_report"
        assert region["raw"]["image"]["instance_uid"] == str(
            pydicom.dcmread(later, stop_before_pixels=True).SOPInstanceUID)
