"""Faults: a worker killed mid-job, a flushed broker, concurrent completion. The database is the
source of truth, so none of them loses a job or makes a second draft."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from tests.conftest import wait_for
from tests.pipeline.conftest import CT_SMALL, complete_now, job_states, store, wait_jobs

SLOW_RULES = {"rules": [{"name": "ct-slow", "priority": 50, "domain": "ct", "modality": ["CT"],
                         "pipeline": ["technical", "test-sleepy"], "queue": "ct"}]}


def _counts():
    from app.db.models import Job, ReportVersion
    from app.db.session import session_factory

    with session_factory()() as s:
        return (s.scalar(select(func.count(Job.id))),
                s.scalar(select(func.count(ReportVersion.id))),
                s.scalar(select(func.max(Job.attempts))))


def _tick_until_done(uid, worker, timeout=120):
    from app.pipeline.loop import tick

    def done():
        tick()
        states = job_states(uid)
        return states if states and all(s in ("done", "failed") for s in states) else None

    try:
        return wait_for(done, timeout=timeout, interval=0.5, what="the job to finish")
    except AssertionError:
        raise AssertionError(f"{job_states(uid)}\n{worker.output()[-3000:]}") from None


def test_worker_killed_mid_job_completes_once(setup, api, auth, worker_factory, monkeypatch):
    monkeypatch.setenv("SLEEPY_SECONDS", "6")
    assert api.put("/api/v1/admin/routes", json=SLOW_RULES,
                   headers=auth["admin"]).status_code == 200
    first = worker_factory()
    uid = store(CT_SMALL)
    complete_now()
    wait_for(lambda: job_states(uid) == ["started"], timeout=60, what="the job to start")
    first.kill()  # SIGKILL the whole worker, mid-job
    assert job_states(uid) == ["started"]
    second = worker_factory()
    assert _tick_until_done(uid, second) == ["done"]
    jobs, versions, attempts = _counts()
    assert (jobs, versions, attempts) == (1, 1, 2)
    kinds = [e["kind"] for e in api.get(f"/api/v1/studies/{uid}",
                                        headers=auth["clinician"]).json()["timeline"]]
    assert "requeued" in kinds and kinds.count("drafted") == 1


def test_flushed_redis_loses_no_job(monkeypatch, tmp_path, pg_url, redis_url, worker_factory):
    import redis

    from app.db import migrate
    from tests.conftest import configure_env

    configure_env(monkeypatch, tmp_path / "var", pg_url, broker_url=redis_url,
                  job_resend_seconds="1")
    migrate.upgrade()
    uid = store(CT_SMALL)
    complete_now()  # the job is committed and its message is in Redis; no worker yet
    assert job_states(uid) == ["queued"]
    redis.Redis.from_url(redis_url).flushdb()
    worker = worker_factory()
    assert _tick_until_done(uid, worker) == ["done"]
    assert _counts()[:2] == (1, 1)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_same_study_completed_twice_at_once_makes_one_job(db, monkeypatch, tmp_path, request):
    from app.db import migrate
    from app.db.session import session_factory
    from app.pipeline import grouping
    from tests.conftest import configure_env

    url = (f"sqlite:///{tmp_path / 'm.db'}" if db == "sqlite"
           else request.getfixturevalue("pg_url"))
    configure_env(monkeypatch, tmp_path / "var", url)
    migrate.upgrade()
    uid = store(CT_SMALL)
    barrier = threading.Barrier(4)
    results = []

    def complete():
        barrier.wait()
        results.append(grouping.complete_study(session_factory(), uid))

    threads = [threading.Thread(target=complete) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert job_states(uid) == ["queued"]
    # and the idle timer finds nothing left to complete
    assert complete_now() == []
    assert job_states(uid) == ["queued"]


def test_new_instances_after_completion_reopen_and_make_a_new_job(setup, worker_factory):
    from pathlib import Path

    import pydicom

    worker = worker_factory()
    uid = store(CT_SMALL)
    complete_now()
    wait_jobs(uid, worker=worker)
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    second = Path(worker.log.parent) / "second.dcm"
    ds.save_as(second)
    store(second)
    assert complete_now() == [uid]
    assert wait_jobs(uid, worker=worker) == ["done", "done"]
    from app.db.models import Report
    from app.db.session import session_factory

    with session_factory()() as s:
        report = s.scalar(select(Report))
        assert [v.state for v in report.versions] == ["draft", "draft"]
        assert report.versions[-1].content["draft"]["sections"]["technique"][0]["text"] \
            .startswith("The study holds 2 instances")
