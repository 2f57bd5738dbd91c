"""A failed study is found on the worklist with its reason and re-run with ``reanalyze`` once the
cause is gone; an optional engine that refuses its input (MERL on a 2-lead Holter record) leaves
a warning in the draft instead of failing it. Real worker process, both set-ups."""

from __future__ import annotations

from tests.conftest import shared_file, wait_for
from tests.pipeline.conftest import complete_now, job_states, wait_jobs

STRICT_ECG = {"rules": [{"name": "ecg-strict", "priority": 90, "domain": "ecg",
                         "modality": ["ECG"], "pipeline": ["technical", "ecg-measure", "merl"]}]}


def _upload_mitbih(api, auth):
    wfdb = shared_file("ecg/wfdb")
    files = [("header", ("100.hea", (wfdb / "100.hea").read_bytes())),
             ("signal", ("100.dat", (wfdb / "100.dat").read_bytes()))]
    r = api.post("/api/v1/ecg", headers=auth["pacs"], files=files,
                 data={"patient_id": "MITBIH-100"})
    assert r.status_code == 201, r.text
    return r.json()


def test_failed_study_is_listed_and_reanalysed_once_the_cause_is_gone(setup, api, auth,
                                                                      worker_factory):
    clin, admin = auth["clinician"], auth["admin"]
    defaults = api.get("/api/v1/admin/routes", headers=admin).json()
    assert api.put("/api/v1/admin/routes", json=STRICT_ECG, headers=admin).status_code == 200
    up = _upload_mitbih(api, auth)
    assert up["leads"] == ["II", "V5"] or len(up["leads"]) == 2
    uid = up["study_uid"]
    complete_now()
    assert job_states(uid) == ["queued"]
    r = api.post(f"/api/v1/studies/{uid}/reanalyze", headers=clin)
    assert r.status_code == 409 and r.json()["type"].endswith(":job-open")
    assert api.post(f"/api/v1/studies/{uid}/reanalyze",
                    headers=auth["pacs"]).status_code == 403

    worker = worker_factory()
    assert wait_jobs(uid, worker=worker) == ["failed"]
    failed = api.get("/api/v1/reports", params={"state": "failed"}, headers=clin).json()
    (item,) = failed["reports"]
    assert item["study_uid"] == uid and item["failed"] is True and item["state"] == "pending"
    assert "MERL needs the 12 standard leads" in item["analysis"]["error"]
    # completing again is not a way to re-run it
    again = api.post(f"/api/v1/studies/{uid}/complete", headers=clin).json()
    assert again["completed_now"] is False and job_states(uid) == ["failed"]
    assert again["hint"].endswith(f"/api/v1/studies/{uid}/reanalyze runs it again")

    # the cause goes: the shipped rules run MERL as an optional engine
    assert api.put("/api/v1/admin/routes", json=defaults, headers=admin).status_code == 200
    r = api.post(f"/api/v1/studies/{uid}/reanalyze", headers=clin)
    assert r.status_code == 202, r.text
    assert r.json()["how"] == "reanalysed" and len(r.json()["jobs"]) == 1
    assert wait_jobs(uid, worker=worker) == ["failed", "done"]
    assert api.get("/api/v1/reports", params={"state": "failed"},
                   headers=clin).json()["reports"] == []

    study = api.get(f"/api/v1/studies/{uid}", headers=clin).json()
    report = api.get(f"/api/v1/reports/{study['reports'][0]['id']}", headers=clin).json()
    assert report["state"] == "draft"
    names = {m["name"] for m in report["measurements"]}
    assert {"heart_rate", "qrs_duration"} <= names
    (skipped,) = [w for w in report["warnings"] if "merl" in w]
    assert skipped.startswith("optional engine merl@reference was skipped: MERL needs the 12 "
                              "standard leads")
    assert [r["model"]["family"] for r in report["untrained_results"]] == []
    kinds = [e["kind"] for e in study["timeline"]]
    assert kinds.count("failed") == 1 and "reanalysis" in kinds and kinds[-1] == "drafted"
    audit = api.get("/api/v1/admin/audit", params={"action": "study.reanalyze"},
                    headers=admin).json()["events"]
    assert {e["outcome"] for e in audit} >= {"success", "conflict"}


def test_reanalysing_an_unknown_or_receiving_study(setup, api, auth, worker_factory):
    clin = auth["clinician"]
    r = api.post("/api/v1/studies/1.2.3.4/reanalyze", headers=clin)
    assert r.status_code == 404
    up = _upload_mitbih(api, auth)  # still receiving: reanalyze completes it now
    r = api.post(f"/api/v1/studies/{up['study_uid']}/reanalyze", headers=clin)
    assert r.status_code == 202 and r.json()["how"] == "completed"
    worker = worker_factory()
    wait_for(lambda: job_states(up["study_uid"]) == ["done"], timeout=120,
             what=f"the job; {worker.output()[-2000:]}")
