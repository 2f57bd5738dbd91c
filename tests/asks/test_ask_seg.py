"""The mask of an answer becomes a DICOM Segmentation of the study: stored through the one store
path, listed by QIDO-RS, returned by WADO-RS, read back by highdicom as the same mask, valid for
dciodvfy; it does not reopen the study and is never analysis input. The answering model is a
registered checkpoint (a reference-size MedPLIB taught to say <SEG>), so no reference notice."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pytest
from sqlalchemy import select

from tests.conftest import dciodvfy
from tests.pixel.taught import ANSWER, teach
from tests.registry.support import activate_now

QUESTION = "Please segment the lesion in <region>."
POINT = [100, 150]


@pytest.fixture
def taught_version(setup, cr_study, tmp_path, monkeypatch):
    from app.config import reset_settings
    from app.db.session import session_scope
    from app.registry.versions import register

    models = tmp_path / "models"
    teach(cr_study[2], QUESTION, tuple(float(v) for v in POINT), models / "medplib-tiny")
    monkeypatch.setenv("MEDGATE_MODEL_DIR", str(models))
    monkeypatch.setenv("MEDGATE_ALLOW_REFERENCE_ANSWERS", "false")
    reset_settings()
    with session_scope() as s:
        register(s, "medplib", "taught-1", weights_path="medplib-tiny", config={})
    activate_now("medplib", "taught-1")
    return "taught-1"


def test_the_mask_of_an_answer_is_stored_as_seg_and_served_back(api, auth, cr_study,
                                                                taught_version, tmp_path):
    from app.db.models import Ask, Job, Study
    from app.db.session import session_factory
    from app.pipeline.runner import execute

    study, instance, source = cr_study
    clin = auth["clinician"]
    r = api.post(f"/api/v1/studies/{study}/ask", headers=clin,
                 json={"instance_uid": instance, "question": QUESTION, "point": POINT})
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["model"] == {"family": "medplib", "version": "taught-1", "trained": True}
    assert "notice" not in queued
    with session_factory()() as s:
        job_id = s.get(Ask, queued["id"]).job_fk
    assert execute(job_id) == "done"

    body = api.get(queued["url"], headers=clin).json()
    assert body["state"] == "done" and body["answer"]["text"] == "It is the lesion."
    assert ANSWER.endswith("<SEG>")
    (region,) = body["answer"]["regions"]
    assert region["kind"] == "mask" and region["instance_uid"] == instance
    assert region["mask"]["shape"] == [320, 256]
    png = api.get(region["mask"]["url"], headers=clin)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from PIL import Image

    mask = (np.asarray(Image.open(io.BytesIO(png.content))) > 0).astype(np.uint8)
    assert mask.shape == (320, 256) and mask.any()
    seg = region["seg"]
    assert seg["url"] == (f"/dicomweb/studies/{study}/series/{seg['series_uid']}/instances/"
                          f"{seg['sop_instance_uid']}")

    # QIDO-RS lists the SEG series and instance; WADO-RS returns it
    series = api.get(f"/dicomweb/studies/{study}/series", headers=clin,
                     params={"Modality": "SEG"}).json()
    assert [s["0020000E"]["Value"][0] for s in series] == [seg["series_uid"]]
    inst = api.get(f"/dicomweb/studies/{study}/series/{seg['series_uid']}/instances",
                   headers=clin).json()
    assert [i["00080018"]["Value"][0] for i in inst] == [seg["sop_instance_uid"]]
    wado = api.get(seg["url"], headers={**clin, "Accept": 'multipart/related; '
                                        'type="application/dicom"'})
    assert wado.status_code == 200
    part = wado.content.split(b"\r\n\r\n", 1)[1]
    boundary = wado.headers["content-type"].split("boundary=")[1].strip('"')
    data = part[:part.rindex(b"\r\n--" + boundary.encode())]
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)

    read = hd.seg.segread(path)
    assert read.SegmentSequence[0].SegmentAlgorithmName == "medplib"
    assert read.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert read.SeriesDescription.startswith("medplib taught-1")
    got = read.get_pixels_by_source_instance(source_sop_instance_uids=[instance],
                                             segment_numbers=[1])
    assert np.array_equal(got[0, :, :, 0].astype(np.uint8), mask)
    errors = [line for line in dciodvfy(path) if line.startswith("Error")]
    assert errors == []

    # MedGate's own result is not new input: the study stays complete, and a re-analysis
    # reads the radiograph only
    with session_factory()() as s:
        row = s.scalar(select(Study).where(Study.study_uid == study))
        assert row.state == "complete"
    with session_factory()() as s:
        first = s.scalars(select(Job.id).where(Job.kind == "analysis")).all()
    assert [execute(j) for j in first] == ["done"]
    r = api.post(f"/api/v1/studies/{study}/reanalyze", headers=clin)
    assert r.status_code == 202, r.text
    with session_factory()() as s:
        (again,) = [s.get(Job, j) for j in r.json()["jobs"]]
        assert again.instance_uids == [instance]
    detail = api.get(f"/api/v1/studies/{study}", headers=clin).json()
    assert [s["derived"] for s in detail["series"] if s["modality"] == "SEG"] == [True]


def test_deleting_a_study_removes_the_files_of_its_asks(api, auth, cr_study, setup):
    """Deleting a study removes its asks' drawn masks and answer masks with it."""
    import base64

    from PIL import Image

    from app.config import get_settings

    study, instance, _ = cr_study
    drawn = np.zeros((320, 256), dtype=np.uint8)
    drawn[10:50, 10:50] = 1
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG")
    r = api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"],
                 json={"instance_uid": instance, "question": "What is this?",
                       "mask": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 202, r.text
    folder = get_settings().asks_dir / study
    assert any(folder.rglob("mask.png"))
    assert api.delete(f"/api/v1/studies/{study}", headers=auth["admin"]).status_code == 200
    assert not folder.exists()
    assert api.get(r.json()["url"], headers=auth["clinician"]).status_code == 404


def test_an_ask_whose_trained_version_was_withdrawn_fails_instead_of_guessing(
        api, auth, cr_study, taught_version):
    """Accepted for a trained version; an administrator then activates an untrained one: the
    worker refuses to let the reference model answer, and the ask says why."""
    from app.db.models import Ask
    from app.db.session import session_factory, session_scope
    from app.pipeline.runner import execute
    from app.registry.versions import register

    study, instance, _ = cr_study
    r = api.post(f"/api/v1/studies/{study}/ask", headers=auth["clinician"],
                 json={"instance_uid": instance, "question": QUESTION, "point": POINT})
    assert r.status_code == 202, r.text
    with session_scope() as s:
        register(s, "medplib", "untrained", variant="reference")
    activate_now("medplib", "untrained")
    with session_factory()() as s:
        job_id = s.get(Ask, r.json()["id"]).job_fk
    assert execute(job_id) == "failed"
    body = api.get(r.json()["url"], headers=auth["clinician"]).json()
    assert body["state"] == "failed" and "answer" not in body
    assert "no trained, active version any more" in body["error"]
