"""Validate -> shadow -> activate -> rollback end to end with a real `medgate worker` process
(the embedded set-up: SQLite and the filesystem broker): the worker validates, drafts from the
active version while the shadow's results are stored and compared, and after a rollback the
next study uses the previous version."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import wait_for
from tests.pipeline.conftest import complete_now, wait_jobs
from tests.registry.test_models_api import (
    _report,
    _study_job,
    change,
    config,
    register,
)

pytestmark = pytest.mark.slow


def _validated_by_worker(api, admin, version, worker):
    r = api.post(f"/api/v1/admin/models/test-reporter/{version}/validate", headers=admin)
    assert r.status_code == 202, r.text

    def outcome():
        body = api.get(r.json()["url"], headers=admin).json()
        return body if body["validations"][0]["state"] != "queued" else None

    try:
        body = wait_for(outcome, timeout=120, interval=0.5, what="validation")
    except AssertionError:
        raise AssertionError(worker.output()[-4000:]) from None
    v = body["validations"][0]
    assert v["state"] == "passed", (v["error"], v["checks"])
    return body


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_life_cycle_with_a_worker(admin_api, worker_factory):
    from app.db.models import ModelRun
    from app.db.session import session_factory
    from app.pipeline.grouping import reanalyze_study

    api, admin, models, keys = admin_api
    worker = worker_factory(queues="cxr")
    register(api, admin, models, "1", config("present", "absent"))
    assert _validated_by_worker(api, admin, "1", worker)["validations"][0]["worker"]
    assert change(api, admin, "test-reporter/1/activate").status_code == 200
    register(api, admin, models, "2", config("present", "present"), seed=1)
    _validated_by_worker(api, admin, "2", worker)
    assert change(api, admin, "test-reporter/2/shadow").status_code == 200

    uid, first = _study_job()
    assert wait_jobs(uid, worker=worker) == ["done"]
    findings = _report(api, keys["clinician"], uid)["sections"]["findings"]
    assert "Heart size is normal." in findings and "enlarged" not in findings
    with session_factory()() as s:
        runs = {(r.version, r.role): r for r in s.scalars(
            select(ModelRun).where(ModelRun.job_fk == first, ModelRun.family == "test-reporter"))}
    assert set(runs) == {("1", "active"), ("2", "shadow")}
    shadow = runs[("2", "shadow")]
    assert shadow.result["model"]["version"] == "2"
    assert shadow.comparison["codes"]["99MEDGATE:cardiomegaly"]["agree"] is False

    assert change(api, admin, "test-reporter/2/activate").status_code == 200
    reanalyze_study(session_factory(), uid, actor="test")
    assert wait_jobs(uid, worker=worker) == ["done", "done"]
    assert "The heart is enlarged." in _report(api, keys["clinician"], uid)["sections"][
        "findings"]
    assert change(api, admin, "test-reporter/rollback").status_code == 200
    reanalyze_study(session_factory(), uid, actor="test")
    complete_now()
    assert wait_jobs(uid, worker=worker) == ["done", "done", "done"]
    assert "Heart size is normal." in _report(api, keys["clinician"], uid)["sections"][
        "findings"]
