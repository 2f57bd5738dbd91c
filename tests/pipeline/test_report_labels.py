"""Signed CXR report versions store the labeller's findings beside the text (issue 11).

The registry compares draft and signed findings per model version, so each signature, amendment
and correction of a CXR report labels its findings and impression (joined with one line break,
spans into that joined text) and records the labeller's version."""

from __future__ import annotations

import os

from sqlalchemy import select

FINDINGS = "Small left pleural effusion. No pneumothorax."
IMPRESSION = "Left effusion; pneumonia cannot be excluded."


def _draft(domain: str) -> int:
    """A study with an AI draft, made by the report service itself (no pipeline needed)."""
    from app.db.models import Patient, Study
    from app.db.session import session_scope
    from app.reports.service import open_report, write_draft

    draft = {"sections": {"findings": [{"text": "Heart size normal.", "evidence": []}],
                          "impression": [{"text": "No acute finding.", "evidence": []}]}}
    with session_scope() as s:
        patient = Patient(patient_id=f"P-LABELS-{domain}")
        s.add(patient)
        s.flush()
        study = Study(study_uid=f"1.2.826.0.1.3680043.10.{os.getpid()}.{len(domain)}",
                      patient_fk=patient.id)
        s.add(study)
        s.flush()
        report = open_report(s, study, domain)
        write_draft(s, report, draft, [], author="test-engine", job_id=0)
        return report.id


def _version(rid: int, number: int):
    from app.db.models import ReportVersion
    from app.db.session import session_scope

    with session_scope() as s:
        v = s.scalar(select(ReportVersion).where(ReportVersion.report_fk == rid,
                                                 ReportVersion.number == number))
        return dict(v.content), dict(v.sections)


def test_a_signed_cxr_version_stores_the_labellers_findings_and_an_edit_does_not(client, keys):
    clin = keys["clinician"]
    rid = _draft("cxr")
    url = f"/api/v1/reports/{rid}"
    etag = client.get(url, headers=clin).headers["ETag"]
    edited = client.patch(url, json={"sections": {"findings": FINDINGS,
                                                  "impression": IMPRESSION}},
                          headers={**clin, "If-Match": etag})
    assert edited.status_code == 200, edited.text
    content, _ = _version(rid, 2)
    assert "labels" not in content and "labeller" not in content

    signed = client.post(f"{url}/sign", headers={**clin, "If-Match": edited.headers["ETag"]})
    assert signed.status_code == 200, signed.text
    content, sections = _version(rid, 3)
    assert content["labeller"] == "cxr-labeller@1.0.0"
    joined = sections["findings"] + "\n" + sections["impression"]
    by_code = {f["code"]: f for f in content["labels"]}
    assert {c: f["state"] for c, f in by_code.items()} == {
        "pleural_effusion": "present", "pneumothorax": "absent", "pneumonia": "uncertain"}
    s, e = by_code["pneumonia"]["span"]
    assert joined[s:e] == "pneumonia" and s > len(sections["findings"])
    s, e = by_code["pleural_effusion"]["span"]
    assert joined[s:e] == "pleural effusion"

    amended = client.post(f"{url}/amend", json={"sections": {"impression": "Left effusion."},
                                                "reason": "pneumonia excluded clinically"},
                          headers={**clin, "If-Match": signed.headers["ETag"]})
    assert amended.status_code == 200, amended.text
    content, _ = _version(rid, 4)
    assert {f["code"] for f in content["labels"]} == {"pleural_effusion", "pneumothorax"}


def test_a_signed_report_of_another_domain_stores_no_cxr_labels(client, keys):
    clin = keys["clinician"]
    rid = _draft("ct")
    url = f"/api/v1/reports/{rid}"
    etag = client.get(url, headers=clin).headers["ETag"]
    signed = client.post(f"{url}/sign", headers={**clin, "If-Match": etag})
    assert signed.status_code == 200, signed.text
    content, _ = _version(rid, 2)
    assert "labels" not in content and "labeller" not in content
