"""A complete study becomes a draft through a real worker, in both set-ups, and the clinician's
actions give the versions and FHIR statuses of DESIGN.md."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.conftest import wait_for
from tests.pipeline.conftest import CT_SMALL, complete_now, store, wait_jobs


def _report_for(api, auth, study_uid):
    items = api.get("/api/v1/reports", headers=auth["clinician"]).json()["reports"]
    ids = [r["id"] for r in items if r["study_uid"] == study_uid]
    assert len(ids) == 1, items
    return api.get(f"/api/v1/reports/{ids[0]}", headers=auth["clinician"])


def stow(api, auth, path) -> str:
    from app.dicom.multipart import content_type, file_chunks, new_boundary, write_parts

    boundary = new_boundary()
    body = b"".join(write_parts([({"Content-Type": "application/dicom"}, file_chunks(path))],
                                boundary))
    r = api.post("/dicomweb/studies", content=body,
                 headers={**auth["pacs"], "Content-Type": content_type(boundary)})
    assert r.status_code == 200, r.text
    return r.json()["00081190"]["Value"][0].rsplit("/", 1)[-1]  # the study's RetrieveURL


def test_complete_study_becomes_draft_then_edit_sign_amend(setup, api, auth, worker_factory):
    worker = worker_factory()
    uid = stow(api, auth, CT_SMALL)  # stored by STOW-RS
    r = api.post(f"/api/v1/studies/{uid}/complete", headers=auth["pacs"])
    assert r.status_code == 200 and r.json()["completed_now"] and r.json()["domain"] == "ct"
    assert wait_jobs(uid, worker=worker) == ["done"]

    r = _report_for(api, auth, uid)
    body = r.json()
    assert body["state"] == "draft" and body["fhir_status"] == "preliminary"
    assert r.headers["etag"] == body["etag"]
    assert "axial CT slice" in body["sections"]["technique"]
    assert all(s["evidence"] for s in body["sentences"]["technique"])
    # the CT rule: technique, measurement (rule-based) and the assistant (untrained reference)
    assert {m["family"]: m["trained"] for m in body["models"]} == {
        "technical": True, "ct-quant": True, "ct-assistant": False}
    kinds = [e["kind"] for e in body["timeline"]]
    for kind in ("received", "complete", "queued", "started", "finished", "drafted"):
        assert kind in kinds, kinds
    rid, etag = body["id"], body["etag"]
    clin = auth["clinician"]

    edited = api.patch(f"/api/v1/reports/{rid}", json={"sections": {"impression": "No acute "
                       "abnormality on this limited single slice."}},
                       headers={**clin, "If-Match": etag})
    assert edited.status_code == 200, edited.text
    assert edited.json()["state"] == "edited" and edited.json()["fhir_status"] == "preliminary"
    stale = api.patch(f"/api/v1/reports/{rid}", json={"sections": {"impression": "x"}},
                      headers={**clin, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.headers["content-type"].startswith("application/problem+json")

    from app.rag.cases import count_cases

    assert count_cases("ct") == 0
    signed = api.post(f"/api/v1/reports/{rid}/sign",
                      headers={**clin, "If-Match": edited.headers["etag"]})
    assert signed.status_code == 200, signed.text
    assert (signed.json()["state"], signed.json()["fhir_status"]) == ("final", "final")
    # the signed report joins the CT case index
    wait_for(lambda: count_cases("ct") >= 1, timeout=120, what="the case index to grow")
    again = api.post(f"/api/v1/reports/{rid}/sign",
                     headers={**clin, "If-Match": signed.headers["etag"]})
    assert again.status_code == 409
    assert set(again.json()["allowed"]) == {"amend", "correct", "withdraw"}

    amended = api.post(f"/api/v1/reports/{rid}/amend",
                       json={"reason": "added comparison", "sections": {"findings": "Stable."}},
                       headers={**clin, "If-Match": signed.headers["etag"]})
    assert amended.status_code == 200, amended.text
    final = amended.json()
    assert (final["state"], final["fhir_status"]) == ("amended", "amended")
    assert [v["state"] for v in final["versions"]] == ["draft", "edited", "final", "amended"]
    assert [v["author_kind"] for v in final["versions"]] == ["model", "user", "user", "user"]
    assert final["versions"][-1]["reason"] == "added comparison"
    assert "signed" in [e["kind"] for e in final["timeline"]]
    v1 = api.get(f"/api/v1/reports/{rid}/versions/1", headers=clin).json()
    assert v1["version"]["state"] == "draft" and v1["sections"]["impression"] == ""

    # The worker's timings reach the API's /metrics (one folder for every process on the host).
    metrics = api.get("/metrics").text
    assert 'medgate_job_queue_wait_seconds_count{domain="ct"}' in metrics
    assert 'medgate_job_run_seconds_count{domain="ct"}' in metrics
    assert 'medgate_engine_run_seconds_count{domain="ct",engine="technical"}' in metrics


def test_redelivered_message_makes_no_second_draft(setup, api, auth, worker_factory):
    from app.db.models import Job, ReportVersion
    from app.db.session import session_factory
    from app.pipeline import jobs

    worker = worker_factory()
    uid = store(CT_SMALL)
    complete_now()
    wait_jobs(uid, worker=worker)
    with session_factory()() as s:
        job = s.scalar(select(Job))
    jobs.send(job.id, job.queue)  # the same message again
    jobs.send(job.id, job.queue)
    import time

    time.sleep(2)
    with session_factory()() as s:
        assert s.scalar(select(func.count(ReportVersion.id))) == 1
        assert s.get(Job, job.id).attempts == 1


def test_write_without_if_match_is_428_and_withdraw_names_reason(setup, api, auth,
                                                                  worker_factory):
    worker = worker_factory()
    uid = store(CT_SMALL)
    complete_now()
    wait_jobs(uid, worker=worker)
    body = _report_for(api, auth, uid).json()
    rid = body["id"]
    assert api.post(f"/api/v1/reports/{rid}/sign", headers=auth["clinician"]).status_code == 428
    no_reason = api.post(f"/api/v1/reports/{rid}/withdraw",
                         headers={**auth["clinician"], "If-Match": body["etag"]})
    assert no_reason.status_code == 422
    gone = api.post(f"/api/v1/reports/{rid}/withdraw", json={"reason": "wrong patient"},
                    headers={**auth["clinician"], "If-Match": body["etag"]})
    assert gone.json()["state"] == "entered_in_error"
    assert gone.json()["fhir_status"] == "entered-in-error"
    events = api.get("/api/v1/admin/audit", params={"resource_type": "report"},
                     headers=auth["admin"]).json()["events"]
    outcomes = {(e["action"], e["outcome"]) for e in events}
    assert ("report.sign", "refused") in outcomes and ("report.withdraw", "success") in outcomes
    assert ("report.read", "success") in outcomes


def test_study_sent_by_c_store_becomes_a_draft(setup, api, auth, worker_factory):
    """dcmtk storescu → MedGate's SCP → idle completion → worker → draft."""
    import subprocess

    from app.config import get_settings
    from app.dicom.scp import DicomSCP
    from tests.conftest import tool
    from tests.dimse.conftest import free_port, register_peers

    settings = get_settings().model_copy(update={"dicom_host": "127.0.0.1",
                                                 "dicom_port": free_port()})
    register_peers(settings, "MODALITY", can_query=False)
    scp = DicomSCP(settings)
    scp.start()
    try:
        worker = worker_factory()
        sent = subprocess.run([tool("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE",
                               "127.0.0.1", str(settings.dicom_port), str(CT_SMALL)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
    finally:
        scp.stop(grace=2)
    studies = api.get("/api/v1/studies", headers=auth["clinician"]).json()["studies"]
    assert len(studies) == 1
    uid = studies[0]["study_uid"]
    assert complete_now() == [uid]
    assert wait_jobs(uid, worker=worker) == ["done"]
    body = _report_for(api, auth, uid).json()
    assert body["state"] == "draft" and "axial CT slice" in body["sections"]["technique"]
    timeline = api.get(f"/api/v1/studies/{uid}", headers=auth["clinician"]).json()["timeline"]
    assert timeline[0]["detail"]["source"].startswith("dimse:MODALITY")
