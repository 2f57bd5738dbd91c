"""Reports back to a real PACS: Orthanc (the Debian package with its DICOMweb plugin, started by
the test on free ports) receives a draft as an UNVERIFIED SR over C-STORE at a review
destination, the signed version as a VERIFIED SR over STOW-RS at the archive, and an amendment
that references the SR it replaces; the tests fetch each back from Orthanc and read it with
highdicom. With Orthanc stopped a delivery retries and lands once it is back; a destination
that refuses for good is failed after one attempt with the status in the error."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pydicom.data
import pytest

from app.export.sr import sr_summary
from tests.conftest import configure_env, role_keys, unavailable, wait_for

pytestmark = pytest.mark.slow
CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
PLUGINS = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
           "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: Path) -> None:
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        plugin = next((p for p in PLUGINS if Path(p).exists()), None)
        if not Path(exe).exists() or plugin is None:
            unavailable("Orthanc with its DICOMweb plugin is not installed (make test installs "
                        "orthanc and orthanc-dicomweb)")
        self.exe, self.folder = exe, folder
        self.http, self.dicom = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "test-pacs", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "HttpPort": self.http,
            "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "DicomCheckCalledAet": False,
            "SaveJobs": False}))
        self.proc: subprocess.Popen | None = None

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http}/dicom-web"

    def start(self) -> None:
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([self.exe, str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{self.http}/system", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, interval=0.3, what="Orthanc")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def srs(self, study_uid: str) -> list[bytes]:
        """Every SR of the study, as Part 10 files, fetched by DICOMweb."""
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(self.dicomweb)
        found = client.search_for_instances(study_instance_uid=study_uid,
                                            search_filters={"Modality": "SR"})
        out = []
        for item in found:
            ds = client.retrieve_instance(study_uid, item["0020000E"]["Value"][0],
                                          item["00080018"]["Value"][0])
            out.append(ds)
        return out


@pytest.fixture
def orthanc(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture
def medgate(monkeypatch, tmp_path):
    from app.db import migrate

    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}",
                  job_heartbeat_seconds="0.5", job_resend_seconds="2", job_lost_seconds="5")
    migrate.upgrade()
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as api:
        yield api, role_keys()


def stow(api, keys, path: Path) -> str:
    from tests.dicomweb.conftest import multipart, stow_headers

    r = api.post("/dicomweb/studies", content=multipart([path.read_bytes()]),
                 headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def deliveries(api, keys, report_id: int) -> list[dict]:
    return api.get(f"/api/v1/reports/{report_id}/deliveries",
                   headers=keys["clinician"]).json()["deliveries"]


def settled(api, keys, report_id: int, n: int, worker, timeout: float = 120) -> list[dict]:
    def done():
        found = deliveries(api, keys, report_id)
        return found if len(found) >= n and all(d["state"] in ("done", "failed")
                                                for d in found) else None

    try:
        return wait_for(done, timeout=timeout, interval=0.5, what="deliveries")
    except AssertionError:
        raise AssertionError(f"{deliveries(api, keys, report_id)}\n"
                             f"{worker.output()[-3000:]}") from None


def report_of(api, keys, study_uid: str, worker) -> dict:
    from tests.pipeline.conftest import complete_now, job_states

    complete_now()

    def analysed():  # the first job is the analysis; deliveries of its draft follow
        states = job_states(study_uid)
        return states if states and states[0] in ("done", "failed") else None

    try:
        assert wait_for(analysed, timeout=90, interval=0.25)[0] == "done"
    except AssertionError:
        raise AssertionError(worker.output()[-3000:]) from None
    study = api.get(f"/api/v1/studies/{study_uid}", headers=keys["clinician"]).json()
    return api.get(f"/api/v1/reports/{study['reports'][0]['id']}",
                   headers=keys["clinician"]).json()


def test_drafts_signed_and_amended_reports_reach_the_pacs(medgate, orthanc, worker_factory):
    api, keys = medgate
    admin = keys["admin"]
    r = api.post("/api/v1/admin/destinations", headers=admin, json={
        "name": "review", "kind": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1",
        "port": orthanc.dicom, "states": ["draft", "edited"]})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/admin/destinations", headers=admin, json={
        "name": "archive", "kind": "stow-rs", "url": orthanc.dicomweb,
        "states": ["final", "amended", "corrected"], "domains": ["ct"]})
    assert r.status_code == 201, r.text
    assert [d["name"] for d in api.get("/api/v1/admin/destinations",
                                       headers=admin).json()["destinations"]] == [
        "archive", "review"]

    worker = worker_factory()
    uid = stow(api, keys, CT_SMALL)
    report = report_of(api, keys, uid, worker)
    (draft,) = settled(api, keys, report["id"], 1, worker)
    assert draft["destination"] == "review" and draft["state"] == "done", draft
    assert draft["status"] == "C-STORE status 0x0000"
    (sr,) = orthanc.srs(uid)
    got = sr_summary(sr)
    assert (got["completion"], got["verification"]) == ("PARTIAL", "UNVERIFIED")

    clin = keys["clinician"]
    signed = api.post(f"/api/v1/reports/{report['id']}/sign", headers={
        **clin, "If-Match": report["etag"]})
    assert signed.status_code == 200, signed.text
    found = settled(api, keys, report["id"], 2, worker)
    assert [(d["destination"], d["state"]) for d in found] == [("review", "done"),
                                                              ("archive", "done")]
    assert found[1]["status"] == "HTTP 200"
    verified = [sr_summary(s) for s in orthanc.srs(uid)]
    (final,) = [s for s in verified if s["verification"] == "VERIFIED"]
    assert final["completion"] == "COMPLETE"
    assert final["verifying_observer"] and "Clinician" in final["verifying_observer"]

    amended = api.post(f"/api/v1/reports/{report['id']}/amend", headers={
        **clin, "If-Match": signed.json()["etag"]},
        json={"reason": "laterality corrected", "sections": {"impression": "Amended."}})
    assert amended.status_code == 200, amended.text
    settled(api, keys, report["id"], 3, worker)
    summaries = {s["sop_instance_uid"]: s for s in map(sr_summary, orthanc.srs(uid))}
    (new,) = [s for s in summaries.values() if s["predecessor"]]
    assert new["predecessor"] == final["sop_instance_uid"]
    # the same SR from MedGate itself, and the FHIR bundle
    r = api.get(f"/api/v1/reports/{report['id']}/sr", headers=clin)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert sr_summary(r.content)["sop_instance_uid"] == new["sop_instance_uid"]
    r = api.get(f"/api/v1/reports/{report['id']}/fhir", headers=clin)
    assert r.headers["content-type"].startswith("application/fhir+json")
    (dr,) = [e["resource"] for e in r.json()["entry"]
             if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert dr["status"] == "amended"


def test_a_stopped_pacs_is_retried_and_a_refusing_one_fails_once(medgate, orthanc,
                                                                  worker_factory):
    api, keys = medgate
    admin = keys["admin"]
    assert api.post("/api/v1/admin/destinations", headers=admin, json={
        "name": "pacs", "kind": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1",
        "port": orthanc.dicom}).status_code == 201
    orthanc.stop()
    worker = worker_factory()
    uid = stow(api, keys, CT_SMALL)
    report = report_of(api, keys, uid, worker)

    def retried():
        (d,) = deliveries(api, keys, report["id"])
        return d if d["attempts"] >= 2 and d["state"] == "queued" else None

    assert "retrying" in wait_for(retried, timeout=60, interval=0.5,
                                  what="a retried delivery")["last_error"]
    orthanc.start()
    (done,) = settled(api, keys, report["id"], 1, worker, timeout=180)
    assert done["state"] == "done" and done["attempts"] >= 2
    assert orthanc.srs(uid)

    # a destination that refuses for good (no such DICOMweb service: HTTP 404), sent by an
    # administrator: failed after one attempt, the status in the error
    assert api.post("/api/v1/admin/destinations", headers=admin, json={
        "name": "wrong-url", "kind": "stow-rs",
        "url": f"http://127.0.0.1:{orthanc.http}/no-such-service"}).status_code == 201
    r = api.post(f"/api/v1/reports/{report['id']}/deliveries", headers=admin,
                 json={"destination": "wrong-url"})
    assert r.status_code == 202, r.text
    assert api.post(f"/api/v1/reports/{report['id']}/deliveries", headers=keys["clinician"],
                    json={"destination": "wrong-url"}).status_code == 403
    found = {d["destination"]: d for d in settled(api, keys, report["id"], 2, worker)}
    assert found["wrong-url"]["state"] == "failed" and found["wrong-url"]["attempts"] == 1
    assert "HTTP 404" in found["wrong-url"]["last_error"]
