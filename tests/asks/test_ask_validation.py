"""POST /api/v1/studies/{uid}/ask refuses what it cannot answer with a specific problem and
leaves nothing behind: no job, no ask, no mask file. Live app, real SQLite, a real radiograph."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def nothing_queued(tmp_path) -> None:
    from app.config import get_settings
    from app.db.models import Ask, Job
    from app.db.session import session_factory

    with session_factory()() as s:
        assert s.scalar(select(func.count(Job.id)).where(Job.kind == "ask")) == 0
        assert s.scalar(select(func.count(Ask.id))) == 0
    asks_dir = get_settings().asks_dir
    assert not asks_dir.exists() or not any(p.is_file() for p in asks_dir.rglob("*"))


def problem(r, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == f"urn:medgate:problem:{slug}", body
    assert r.headers["content-type"].startswith("application/problem+json")
    return body


@pytest.mark.parametrize("body, status, slug, says", [
    ({"point": [256, 10]}, 422, "coordinate-outside-image", "256 x 320"),
    ({"point": [-1, 10]}, 422, "coordinate-outside-image", "outside the image"),
    ({"point": [10, 320]}, 422, "coordinate-outside-image", "outside the image"),
    ({"box": [200, 300, 60, 10]}, 422, "coordinate-outside-image", "reaches outside"),
    ({"box": [10, 10, 0, 5]}, 422, "coordinate-outside-image", "empty"),
    ({"frame": 2}, 422, "bad-frame", "1 frame"),
    ({"point": [5, 5], "box": [1, 1, 2, 2]}, 422, "one-region", "one"),
    ({"mask": "not base64!"}, 422, "bad-mask", "base64"),
    ({"mask": base64.b64encode(b"GIF89a....").decode()}, 422, "bad-mask", "PNG"),
    ({"family": "nonesuch"}, 422, "unknown-engine", "nonesuch"),
    ({"family": "technical"}, 422, "family-cannot-answer", "does not answer"),
    ({"family": "merl"}, 422, "family-cannot-answer", "does not answer"),
    ({"family": "medrega", "point": [5, 5]}, 422, "family-cannot-point", "ask medplib"),
    ({"family": "libra", "box": [1, 1, 5, 5]}, 422, "family-cannot-point",
     "ask medplib or medrega"),
    ({"question": ""}, 422, "validation-error", ""),
    ({"point": [float("nan"), 1]}, 422, "validation-error", ""),
    ({"colour": "red"}, 422, "validation-error", ""),
])
def test_bad_requests_get_a_specific_problem_and_leave_nothing(api, auth, cr_study, tmp_path,
                                                              body, status, slug, says):
    study, instance, _ = cr_study
    payload = {"instance_uid": instance, "question": "What is this?", **body}
    if body.get("point") and body["point"][0] != body["point"][0]:  # NaN is not JSON: send raw
        r = api.post(f"/api/v1/studies/{study}/ask", headers={
            **auth["clinician"], "content-type": "application/json"},
            content=b'{"instance_uid": "%s", "question": "q", "point": [NaN, 1]}'
            % instance.encode())
    else:
        r = api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"], json=payload)
    got = problem(r, status, slug) if slug != "validation-error" else None
    if got is None:
        assert r.status_code == 422, r.text
    else:
        assert says in got["detail"], got
    nothing_queued(tmp_path)


def test_masks_of_the_wrong_size_or_empty_are_refused(api, auth, cr_study, tmp_path):
    study, instance, _ = cr_study
    url = f"/api/v1/studies/{study}/ask"
    base = {"instance_uid": instance, "question": "Segment the lesion"}
    big = np.ones((640, 512), dtype=np.uint8)
    got = problem(api.post(url, headers=auth["clinician"], json={**base, "mask": png(big)}),
                  422, "mask-size")
    assert "512 x 640" in got["detail"] and "256 x 320" in got["detail"]
    got = problem(api.post(url, headers=auth["clinician"],
                           json={**base, "mask": png(np.ones((320, 255)))}), 422, "mask-size")
    empty = np.zeros((320, 256), dtype=np.uint8)
    problem(api.post(url, headers=auth["clinician"], json={**base, "mask": png(empty)}),
            422, "mask-empty")
    nothing_queued(tmp_path)


def test_the_instance_must_be_an_image_of_this_study(api, auth, cr_study, tmp_path):
    from tests.asks.conftest import chest_cr
    from tests.pipeline.conftest import store

    study, instance, _ = cr_study
    other = chest_cr(tmp_path / "other.dcm", patient="ASK-2")
    import pydicom

    other_uid = str(pydicom.dcmread(other, stop_before_pixels=True).SOPInstanceUID)
    other_study = store(other)
    for uid in ("1.2.3.4.5", other_uid):
        got = problem(api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"],
                               json={"instance_uid": uid, "question": "What is this?"}),
                      422, "instance-not-in-study")
        assert uid in got["detail"]
    problem(api.post("/api/v1/studies/1.2.3/ask", headers=auth["clinician"],
                     json={"instance_uid": instance, "question": "What is this?"}),
            404, "not-found")
    assert other_study != study
    nothing_queued(tmp_path)


def test_pacs_keys_may_not_ask_and_no_key_is_401(api, auth, cr_study, tmp_path):
    study, instance, _ = cr_study
    body = {"instance_uid": instance, "question": "What is this?", "box": [10, 10, 50, 50]}
    assert api.post(f"/api/v1/studies/{study}/ask", headers=auth["pacs"],
                    json=body).status_code == 403
    assert api.post(f"/api/v1/studies/{study}/ask", json=body).status_code == 401
    assert api.get("/api/v1/asks/1", headers=auth["pacs"]).status_code == 403
    nothing_queued(tmp_path)


def test_without_reference_answers_an_untrained_family_is_409(api, auth, cr_study, tmp_path,
                                                             monkeypatch):
    from app.config import reset_settings

    monkeypatch.setenv("MEDGATE_ALLOW_REFERENCE_ANSWERS", "false")
    reset_settings()
    study, instance, _ = cr_study
    got = problem(api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"],
                           json={"instance_uid": instance, "question": "What is here?",
                                 "box": [10, 10, 50, 50]}), 409, "no-trained-version")
    assert "medrega has no trained, active version" in got["detail"]
    assert "MEDGATE_ALLOW_REFERENCE_ANSWERS" in got["detail"]
    nothing_queued(tmp_path)


def test_an_accepted_ask_is_queued_as_a_job_on_the_domain_queue(api, auth, cr_study):
    from app.db.models import Ask, Job
    from app.db.session import session_factory

    study, instance, _ = cr_study
    r = api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"],
                 json={"instance_uid": instance, "question": "What is in this region?",
                       "box": [20, 30, 100, 120]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == body["url"] == f"/api/v1/asks/{body['id']}"
    assert body["state"] == "queued" and body["model"]["family"] == "medrega"
    assert body["model"]["trained"] is False
    assert body["notice"] == "reference model: not for clinical use"
    with session_factory()() as s:
        ask = s.get(Ask, body["id"])
        job = s.get(Job, ask.job_fk)
        assert (job.kind, job.queue, job.state, job.domain) == ("ask", "cxr", "queued", "cxr")
        assert job.instance_uids == [instance]
        assert ask.prompt["box"] == [20.0, 30.0, 100.0, 120.0]
    # an open ask does not block a re-analysis, which only waits for analysis jobs
    got = api.get(f"/api/v1/asks/{body['id']}", headers=auth["clinician"]).json()
    assert got["state"] == "queued" and "answer" not in got
    listed = api.get(f"/api/v1/studies/{study}/asks", headers=auth["clinician"]).json()
    assert [a["id"] for a in listed["asks"]] == [body["id"]]
