"""The ping task round-trips through the embedded filesystem broker and through Redis, each
with a separate worker process."""

import pytest

from app.pipeline.tasks import ping
from tests.conftest import configure_env


def _round_trip(worker):
    try:
        result = ping.apply_async().get(timeout=60)
    except Exception:
        pytest.fail(f"no answer from the worker; its log:\n{worker.output()[-3000:]}")
    assert result["pong"] == "ok"


def test_ping_through_filesystem_broker(monkeypatch, tmp_path, worker_factory):
    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}")
    worker = worker_factory()
    _round_trip(worker)
    assert (tmp_path / "var" / "broker" / "in").is_dir()


def test_ping_through_redis(monkeypatch, tmp_path, redis_url, worker_factory):
    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}",
                  broker_url=redis_url)
    worker = worker_factory()
    _round_trip(worker)


def test_readyz_names_the_failed_broker(monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from app.db import migrate
    from app.main import create_app

    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}",
                  broker_url="redis://127.0.0.1:1/0")
    migrate.upgrade()
    with TestClient(create_app()) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["failed"] == ["broker"] and body["checks"]["database"]["ok"]
