"""Fixtures for pipeline tests: MedGate in the embedded set-up (SQLite, filesystem broker) and
the distributed one (PostgreSQL, Redis), each with a real worker process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom.data
import pytest

from tests.conftest import configure_env, role_keys, wait_for

CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
ECG = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))


@pytest.fixture(params=["embedded", "distributed"])
def setup(request, monkeypatch, tmp_path):
    """Configure MedGate for one set-up; returns its name."""
    from app.db import migrate

    if request.param == "embedded":
        configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}",
                      job_lost_seconds="3", job_heartbeat_seconds="0.5",
                      job_resend_seconds="1",
                      engine_plugins="tests.plugins.sleepy_engine")
    else:
        configure_env(monkeypatch, tmp_path / "var", request.getfixturevalue("pg_url"),
                      broker_url=request.getfixturevalue("redis_url"),
                      job_lost_seconds="3", job_heartbeat_seconds="0.5",
                      job_resend_seconds="1",
                      engine_plugins="tests.plugins.sleepy_engine")
    migrate.upgrade()
    yield request.param


@pytest.fixture
def api(setup):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def auth(setup) -> dict[str, dict[str, str]]:
    return role_keys()


def store(path: Path) -> str:
    from app.db.session import session_factory
    from app.dicom.store import store_path

    return store_path(session_factory(), path, source="test").study_uid


def complete_now() -> list[str]:
    """Complete every receiving study as if its idle time had passed."""
    from app.db.models import utcnow
    from app.db.session import session_factory
    from app.pipeline import grouping

    return grouping.complete_idle(session_factory(), now=utcnow() + timedelta(hours=1))


def job_states(study_uid: str) -> list[str]:
    from sqlalchemy import select

    from app.db.models import Job, Study
    from app.db.session import session_factory

    with session_factory()() as s:
        return list(s.scalars(select(Job.state).join(Study).where(Study.study_uid == study_uid)
                              .order_by(Job.id)))


def wait_jobs(study_uid: str, states=("done", "failed"), timeout=90, worker=None) -> list[str]:
    def ready():
        found = job_states(study_uid)
        return found if found and all(s in states for s in found) else None

    try:
        return wait_for(ready, timeout=timeout, interval=0.25, what=f"jobs of {study_uid}")
    except AssertionError:
        log = worker.output()[-4000:] if worker else ""
        raise AssertionError(f"jobs {job_states(study_uid)}; worker log:\n{log}") from None
