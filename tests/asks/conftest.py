"""Fixtures for the interactive questions: a migrated MedGate (embedded, and with PostgreSQL and
Redis where a test asks for both), the app and keys of each role, and a chest radiograph
study."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import configure_env, cr_from_png, shared_file
from tests.pipeline.conftest import api, auth  # noqa: F401 - fixtures, on this folder's setup


def chest_cr(out: Path, rows: int = 320, columns: int = 256, patient: str = "ASK-1") -> Path:
    """A CR of a real radiograph (NIH ChestX-ray14), cropped and downsized to a non-square
    image so that every padding path is exercised."""
    return cr_from_png(shared_file("cxr/00000001_000.png"), out, patient=patient,
                       date="20260105", name="Test^Ask", crop=(112, 0, 912, 1000),
                       size=(columns, rows))


def configure(monkeypatch, tmp_path, kind: str, request, **extra: str) -> None:
    from app.db import migrate

    settings = dict(job_lost_seconds="5", job_heartbeat_seconds="0.5", job_resend_seconds="2",
                    **extra)
    if kind == "embedded":
        configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}",
                      **settings)
    else:
        configure_env(monkeypatch, tmp_path / "var", request.getfixturevalue("pg_url"),
                      broker_url=request.getfixturevalue("redis_url"), **settings)
    migrate.upgrade()


@pytest.fixture
def setup(monkeypatch, tmp_path, request):
    """Embedded MedGate where reference answers are allowed (the tests have no trained
    weights); ``api`` and ``auth`` (tests/pipeline/conftest.py) build on it."""
    configure(monkeypatch, tmp_path, "embedded", request, allow_reference_answers="true")
    return tmp_path


@pytest.fixture
def cr_study(setup, tmp_path) -> tuple[str, str, Path]:
    """(study UID, instance UID, file) of a stored, routed CR study of 256 x 320 pixels."""
    from tests.pipeline.conftest import complete_now, store

    path = chest_cr(tmp_path / "cr.dcm")
    study = store(path)
    complete_now()
    return study, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), path
