"""Study grouping: idle completion per domain, explicit completion, re-opening."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from tests.conftest import configure_env
from tests.pipeline.conftest import CT_SMALL, ECG, store


def test_idle_time_is_per_domain(monkeypatch, tmp_path, db_url):
    from app.db import migrate
    from app.db.models import Study, utcnow
    from app.db.session import session_factory
    from app.pipeline import grouping

    configure_env(monkeypatch, tmp_path / "var", db_url, stable_seconds="10",
                  stable_seconds_by_domain='{"ct": 60}')
    migrate.upgrade()
    ct, ecg = store(CT_SMALL), store(ECG)
    factory = session_factory()
    assert grouping.complete_idle(factory, now=utcnow() + timedelta(seconds=5)) == []
    assert grouping.complete_idle(factory, now=utcnow() + timedelta(seconds=20)) == [ecg]
    assert grouping.complete_idle(factory, now=utcnow() + timedelta(seconds=61)) == [ct]
    with factory() as s:
        states = dict(s.execute(select(Study.study_uid, Study.state)).all())
    assert states == {ct: "complete", ecg: "complete"}
    # explicit completion of a complete study is a no-op; of an unknown one says so
    assert grouping.complete_study(factory, ct) is False
    assert grouping.complete_study(factory, "1.2.3.999") is None


def test_complete_endpoint_and_a_study_that_keeps_receiving(client, keys):
    from app.db.models import utcnow
    from app.db.session import session_factory
    from app.pipeline import grouping

    uid = store(CT_SMALL)
    # still receiving: not idle long enough
    assert grouping.complete_idle(session_factory(), now=utcnow()) == []
    r = client.post(f"/api/v1/studies/{uid}/complete", headers=keys["pacs"])
    assert r.json()["completed_now"] is True and r.json()["state"] == "complete"
    r = client.post(f"/api/v1/studies/{uid}/complete", headers=keys["pacs"])
    assert r.json()["completed_now"] is False
    assert client.post("/api/v1/studies/1.2.3/complete",
                       headers=keys["pacs"]).status_code == 404
