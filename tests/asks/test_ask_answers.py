"""Asks answered by a real worker process through the job machinery: a point and a drawn mask
go to MedPLIB, a box to MedRegA; each answer comes back with its model version, timings and
the reference notice. With PostgreSQL and Redis too. Reference answers are allowed here."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.asks.conftest import chest_cr, configure
from tests.conftest import wait_for


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def answered(api, headers, ask_id: int, worker, timeout: float = 120) -> dict:
    def done():
        body = api.get(f"/api/v1/asks/{ask_id}", headers=headers).json()
        return body if body["state"] in ("done", "failed") else None

    try:
        return wait_for(done, timeout=timeout, interval=0.25, what=f"ask {ask_id}")
    except AssertionError:
        raise AssertionError(f"worker log:\n{worker.output()[-4000:]}") from None


def test_a_point_a_box_and_a_mask_each_get_an_answer(api, auth, cr_study, worker_factory):
    study, instance, _ = cr_study
    clin = auth["clinician"]
    drawn = np.zeros((320, 256), dtype=np.uint8)
    drawn[120:200, 40:140] = 255
    asks = {}
    for kind, extra in (("point", {"point": [100, 150]}), ("box", {"box": [20, 30, 100, 120]}),
                        ("mask", {"mask": png(drawn)})):
        r = api.post(f"/api/v1/studies/{study}/ask", headers=clin,
                     json={"instance_uid": instance, "question": "What is in this region?",
                           **extra})
        assert r.status_code == 202, r.text
        asks[kind] = r.json()
    assert {k: a["model"]["family"] for k, a in asks.items()} == {
        "point": "medplib", "box": "medrega", "mask": "medplib"}
    worker = worker_factory()
    for kind, queued in asks.items():
        body = answered(api, clin, queued["id"], worker)
        assert body["state"] == "done", body
        assert body["model"] == {"family": queued["model"]["family"], "version": "reference",
                                 "trained": False}
        assert body["notice"] == "reference model: not for clinical use"
        assert isinstance(body["answer"]["text"], str) and body["answer"]["text"]
        assert body["timings"]["total"] > 0 and body["job"]["attempts"] == 1
        assert any("reference variant" in w for w in body["answer"]["warnings"])
        assert body["prompt"] == ({"mask": True} if kind == "mask" else
                                  {kind: [float(v) for v in queued["prompt"][kind]]})
    # the timeline tells the story; the study's own analysis went on beside the asks
    detail = api.get(f"/api/v1/studies/{study}", headers=clin).json()
    kinds = [e["kind"] for e in detail["timeline"]]
    assert kinds.count("ask") == 3 and kinds.count("answered") == 3
    assert sorted(j["kind"] for j in detail["jobs"]) == ["analysis", "ask", "ask", "ask"]
    audit = api.get("/api/v1/admin/audit", headers=auth["admin"],
                    params={"action": "study.ask"}).json()
    assert len([e for e in audit["events"] if e["outcome"] == "success"]) == 3


@pytest.fixture
def distributed(monkeypatch, tmp_path, request):
    configure(monkeypatch, tmp_path, "distributed", request, allow_reference_answers="true")


def test_an_ask_on_postgresql_and_redis_survives_a_lost_message(distributed, tmp_path,
                                                               worker_factory):
    """The broker forgets the message (Redis flushed): the sweeper sends it again and the
    ask is answered; nothing acknowledged is lost."""
    import redis
    from fastapi.testclient import TestClient

    from app.config import get_settings
    from app.db.session import session_factory, session_scope
    from app.main import create_app
    from app.pipeline import jobs
    from app.security.keys import create_key
    from tests.pipeline.conftest import complete_now, store

    with session_scope() as session:
        _, key = create_key(session, "clinician", "c", person_name="Dr C")
    headers = {"Authorization": f"Bearer {key}"}
    path = chest_cr(tmp_path / "cr.dcm", patient="ASK-PG")
    import pydicom

    instance = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    study = store(path)
    complete_now()
    with TestClient(create_app()) as api:
        r = api.post(f"/api/v1/studies/{study}/ask", headers=headers,
                     json={"instance_uid": instance, "question": "What is here?",
                           "point": [128, 160], "language": "en-GB"})
        assert r.status_code == 202, r.text
        redis.Redis.from_url(get_settings().broker_url).flushdb()
        jobs.sweep(session_factory(), now=None)  # too early: nothing re-sent yet
        worker = worker_factory()

        def resend():
            jobs.sweep(session_factory())
            body = api.get(r.json()["url"], headers=headers).json()
            return body if body["state"] == "done" else None

        try:
            body = wait_for(resend, timeout=120, interval=0.5, what="the ask")
        except AssertionError:
            raise AssertionError(worker.output()[-4000:]) from None
        assert body["answer"]["text"] and body["language"] == "en-GB"
