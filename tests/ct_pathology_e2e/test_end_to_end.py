"""CT and pathology end to end. A real CT series with the liver segmentation that came with it,
and a CT chest phantom series, both sent by dcmtk's storescu, become drafts with measured
findings: the volume technique, the liver's volume and attenuation, the lungs' volumes and
LAA-950, each with its evidence; the CT assistant's reference run is kept out of the text, its
prompt holding the retrieved entries and the measurements. A whole-slide image sent by STOW-RS
becomes a draft with its tissue, quality and nuclei, the nuclei a bulk annotation object."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.conftest import shared_file, tool, wait_for
from tests.ct.phantoms import synthetic_chest, write_series
from tests.dimse.conftest import sqlite_medgate, sqlite_scp  # noqa: F401 - shared fixtures
from tests.pipeline.conftest import complete_now, job_states

pytestmark = pytest.mark.slow


def send(scp, paths: list[Path]) -> str:
    # -R: propose the storage classes of the files given (SEG is not in dcmtk's default list)
    sent = subprocess.run([tool("storescu"), "-R", "-aec", scp.settings.ae_title, "-aet",
                           "STORESCU", "127.0.0.1", str(scp.port), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def wait_done(uid: str, worker) -> None:
    def done():
        states = job_states(uid)
        return states if states and all(s in ("done", "failed") for s in states) else None

    try:
        assert wait_for(done, timeout=240, interval=0.5) == ["done"]
    except AssertionError:
        raise AssertionError(f"{job_states(uid)}\n{worker.output()[-3000:]}") from None


def report_of(api, auth, uid: str) -> dict:
    study = api.get(f"/api/v1/studies/{uid}", headers=auth).json()
    return api.get(f"/api/v1/reports/{study['reports'][0]['id']}", headers=auth).json()


def texts(report: dict, section: str) -> list[str]:
    return [s["text"] for s in report["sentences"][section]]


def test_ct_studies_become_drafts_with_measured_findings(
        sqlite_scp, worker_factory, tmp_path, monkeypatch):  # noqa: F811 - imported fixture
    from fastapi.testclient import TestClient

    from app.db.session import session_scope
    from app.main import create_app
    from app.security.keys import create_key

    monkeypatch.setenv("MEDGATE_EMBEDDER", "hashing")  # the worker's knowledge search
    seg = shared_file("ct/ct-3slice/liver_seg.dcm")
    liver_uid = send(sqlite_scp, [*sorted(seg.parent.glob("0*.dcm")), seg])
    hu, meta = synthetic_chest(laa_fraction=0.12, seed=5)
    chest = write_series(tmp_path / "chest", hu, spacing=meta["spacing"], body_part="CHEST",
                         series_description="CHEST NON CONTRAST", patient_id="CT-E2E-2")
    chest_uid = send(sqlite_scp, chest)
    worker = worker_factory()
    complete_now()
    wait_done(liver_uid, worker)
    wait_done(chest_uid, worker)

    with session_scope() as s:
        _, key = create_key(s, "clinician", "ct", person_name="Dr CT")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as api:
        liver = report_of(api, auth, liver_uid)
        assert any(t.startswith("Volume of 3 slices of 512 x 512 pixels") for t in
                   texts(liver, "technique"))
        (stated,) = [s for s in liver["sentences"]["findings"]
                     if s["text"].startswith("Liver volume")]
        assert "Liver mean attenuation 37.3 HU" in stated["text"]
        assert {e["kind"] for e in stated["evidence"]} == {"measurement"}
        assistant = [r for r in liver["untrained_results"]
                     if r["model"]["family"] == "ct-assistant"]
        (result,) = assistant
        assert "ct-hepatic-steatosis" in [e["id"] for e in result["raw"]["entries"]]
        assert "- liver mean: 37.3" in result["raw"]["prompt"]
        assert "ct-assistant" not in json.dumps(liver["sections"])

        chest_report = report_of(api, auth, chest_uid)
        (lungs,) = [t for t in texts(chest_report, "findings") if t.startswith("Lung volume")]
        laa = float(lungs.split("Emphysema index (LAA-950) ")[1].split(" %")[0])
        assert laa == pytest.approx(12.0, abs=1.0)
        assert "Contrast phase: unenhanced (from the headers)." in texts(chest_report,
                                                                         "technique")


def test_a_slide_sent_by_stow_rs_becomes_a_draft_and_its_nuclei_an_annotation(
        sqlite_medgate, worker_factory, tmp_path):  # noqa: F811 - the imported fixture
    """A DICOM VL Whole Slide Microscopy image of a real H&E slide (a region of the Aperio SVS,
    tiled as DICOM by the test) stored by STOW-RS: the draft's technique and findings carry the
    tissue area, the tile quality and the nuclei density; the nuclei come back from QIDO-RS and
    WADO-RS as a Microscopy Bulk Simple Annotations instance that references the slide."""
    import io

    import highdicom as hd
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import role_keys
    from tests.dicomweb.conftest import multipart, stow_headers
    from tests.pathology.dicom_slide import SVS, make_wsm

    keys = role_keys()
    (level0,) = make_wsm(shared_file(SVS), tmp_path / "slide", patient_id="SLIDE-E2E")
    worker = worker_factory()
    with TestClient(create_app()) as api:
        r = api.post("/dicomweb/studies", content=multipart([level0.read_bytes()]),
                     headers=stow_headers(keys["pacs"]))
        assert r.status_code == 200, r.text
        uid = str(pydicom.dcmread(level0, stop_before_pixels=True).StudyInstanceUID)
        complete_now()
        wait_done(uid, worker)
        report = report_of(api, keys["clinician"], uid)
        technique = " ".join(texts(report, "technique"))
        assert "Whole-slide image of 1024 x 1024 pixels at 0.499 µm per pixel" in technique
        assert "checked for stain and focus quality" in technique
        (stated,) = [t for t in texts(report, "findings") if t.startswith("Tissue area")]
        assert "Nuclei per mm² of tissue analysed" in stated

        series = api.get(f"/dicomweb/studies/{uid}/series", headers=keys["clinician"],
                         params={"Modality": "ANN"}).json()
        (ann_series,) = series
        ann_uid = ann_series["0020000E"]["Value"][0]
        got = api.get(f"/dicomweb/studies/{uid}/series/{ann_uid}",
                      headers={**keys["clinician"],
                               "Accept": 'multipart/related; type="application/dicom"'})
        assert got.status_code == 200
        body = got.content.split(b"\r\n\r\n", 1)[1]
        boundary = got.headers["content-type"].split("boundary=")[1].strip('"')
        data = body[:body.rindex(b"\r\n--" + boundary.encode())]
        ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(pydicom.dcmread(
            io.BytesIO(data)))
        (group,) = ann.get_annotation_groups()
        slide_uid = str(pydicom.dcmread(level0, stop_before_pixels=True).SOPInstanceUID)
        assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == slide_uid
        assert group.label == "Nuclei" and len(group.get_graphic_data(
            coordinate_type=ann.AnnotationCoordinateType)) > 50
