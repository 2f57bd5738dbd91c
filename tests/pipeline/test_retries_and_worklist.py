"""Transient errors give the job back for a retry; the worklist filters and orders."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.pipeline.conftest import CT_SMALL, ECG, complete_now, job_states, store


def test_transient_error_releases_the_job_and_the_retry_finishes_it(client, keys, monkeypatch,
                                                                     tmp_path):
    from app.config import reset_settings
    from app.db.models import Job
    from app.db.session import session_factory
    from app.pipeline.runner import TransientError, execute

    monkeypatch.setenv("MEDGATE_ENGINE_PLUGINS", "tests.plugins.flaky_engine")
    monkeypatch.setenv("FLAKY_MARKER", str(tmp_path / "flaky"))
    reset_settings()
    rules = {"rules": [{"name": "ct-flaky", "domain": "ct", "modality": ["CT"],
                        "pipeline": ["technical", "test-flaky"], "queue": "ct"}]}
    assert client.put("/api/v1/admin/routes", json=rules,
                      headers=keys["admin"]).status_code == 200
    uid = store(CT_SMALL)
    complete_now()
    with session_factory()() as s:
        job_id = s.scalar(select(Job.id))
    with pytest.raises(TransientError):
        execute(job_id)  # the task turns this into a Celery retry with backoff
    with session_factory()() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.claim) == ("queued", None)
        assert job.error.startswith("retrying:")
    assert execute(job_id) == "done"
    assert job_states(uid) == ["done"]
    with session_factory()() as s:
        assert s.get(Job, job_id).attempts == 2


def test_worklist_filters_by_state_domain_patient_and_pages(client, keys):
    from app.db.models import Job
    from app.db.session import session_factory
    from app.pipeline.runner import execute

    store(CT_SMALL)
    store(ECG)
    complete_now()
    with session_factory()() as s:
        ids = list(s.scalars(select(Job.id).order_by(Job.id)))
    execute(ids[0])  # the CT draft; the ECG report stays pending
    clin = keys["clinician"]

    def listed(**params):
        r = client.get("/api/v1/reports", params=params, headers=clin)
        assert r.status_code == 200, r.text
        return [(x["domain"], x["state"]) for x in r.json()["reports"]]

    assert listed() == [("ct", "draft"), ("ecg", "pending")]  # oldest first
    assert listed(state="draft") == [("ct", "draft")]
    assert listed(state=["draft", "pending"], domain="ecg") == [("ecg", "pending")]
    ecg_patient = pydicom_patient(ECG)
    assert listed(patient_id=ecg_patient) == [("ecg", "pending")]
    assert listed(limit=1, offset=1) == [("ecg", "pending")]
    assert listed(since="2999-01-01T00:00:00Z") == []
    assert client.get("/api/v1/reports", params={"state": "nonsense"},
                      headers=clin).status_code == 422


def pydicom_patient(path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)


def test_sweeper_waits_twice_as_long_before_each_new_resend(medgate):
    from datetime import timedelta

    from app.db.models import Job
    from app.db.session import session_factory
    from app.pipeline.jobs import sweep

    store(CT_SMALL)
    complete_now()
    factory = session_factory()
    with factory() as s:
        job = s.scalar(select(Job))
        t0, first = job.queued_at, medgate.job_resend_seconds
    assert sweep(factory, now=t0 + timedelta(seconds=first - 1))["resent"] == []
    t1 = t0 + timedelta(seconds=first + 1)
    assert sweep(factory, now=t1)["resent"] == [job.id]
    assert sweep(factory, now=t1 + timedelta(seconds=first + 1))["resent"] == []  # needs 2x
    t2 = t1 + timedelta(seconds=2 * first + 1)
    assert sweep(factory, now=t2)["resent"] == [job.id]
    assert sweep(factory, now=t2 + timedelta(seconds=3 * first))["resent"] == []  # needs 4x
    with factory() as s:
        assert s.get(Job, job.id).resends == 2
