"""Keys belong to people, and a signature records the person (issue 10, item 10).

A clinician key names the person it was issued to (display name, optional site identifier);
pacs and admin keys may name nobody. Edits and signatures record that person. A clinician key
from before people were recorded still authenticates and reads, but cannot sign."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from tests.foundation.test_cli_and_settings import run_cli


def _a_draft() -> int:
    """A study with an AI draft, made by the report service itself (no pipeline needed)."""
    from app.db.models import Patient, Study
    from app.db.session import session_scope
    from app.reports.service import open_report, write_draft

    draft = {"sections": {"findings": [{"text": "Heart size normal.", "evidence": []}],
                          "impression": [{"text": "No acute finding.", "evidence": []}]}}
    with session_scope() as s:
        patient = Patient(patient_id="P-PEOPLE")
        s.add(patient)
        s.flush()
        study = Study(study_uid=f"1.2.826.0.1.3680043.10.{os.getpid()}.7", patient_fk=patient.id)
        s.add(study)
        s.flush()
        report = open_report(s, study, "cxr")
        write_draft(s, report, draft, [], author="test-engine", job_id=0)
        return report.id


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_clinician_key_must_name_a_person_other_roles_need_not(medgate):
    from app.db.session import session_scope
    from app.security.keys import ApiKeyError, create_key

    with session_scope() as s:
        with pytest.raises(ApiKeyError, match="person"):
            create_key(s, "clinician", "ward-pc")
        row, _ = create_key(s, "clinician", "jd", person_name=" Dr Jane Doe ",
                            person_id="GMC1234")
        assert (row.person_name, row.person_id) == ("Dr Jane Doe", "GMC1234")
        for role in ("pacs", "admin"):
            row, _ = create_key(s, role, f"sys-{role}")
            assert row.person_name == "" and row.person_id == ""


def test_admin_api_records_the_person_and_refuses_a_clinician_key_without_one(client, keys):
    admin = keys["admin"]
    refused = client.post("/api/v1/admin/keys", json={"role": "clinician", "name": "x"},
                          headers=admin)
    assert refused.status_code == 422 and "person_name" in refused.json()["detail"]
    made = client.post("/api/v1/admin/keys", json={"role": "clinician", "name": "jd",
                                                   "person_name": "Dr Jane Doe",
                                                   "person_id": "GMC1234"}, headers=admin)
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["person_name"], body["person_id"]) == ("Dr Jane Doe", "GMC1234")
    listed = client.get("/api/v1/admin/keys", headers=admin).json()["keys"]
    assert any(k["person_name"] == "Dr Jane Doe" for k in listed)
    me = client.get("/api/v1/whoami", headers=_bearer(body["key"])).json()
    assert me["person"] == {"name": "Dr Jane Doe", "id": "GMC1234", "key_id": body["id"]}
    events = client.get("/api/v1/admin/audit", params={"action": "key.create"},
                        headers=admin).json()["events"]
    assert any(e["detail"].get("person_name") == "Dr Jane Doe" for e in events)


def test_cli_keys_create_records_the_person(medgate):
    env = dict(os.environ)
    no_person = run_cli("keys", "create", "--role", "clinician", "--name", "x", env=env)
    assert no_person.returncode == 2 and "--person" in no_person.stderr
    made = run_cli("keys", "create", "--role", "clinician", "--name", "jd", "--person",
                   "Dr Jane Doe", "--person-id", "GMC1234", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("mg_")
    listed = run_cli("keys", "list", env=env)
    assert "Dr Jane Doe" in listed.stdout and "GMC1234" in listed.stdout

    from app.db.session import session_scope
    from app.security.keys import authenticate

    with session_scope() as s:
        p = authenticate(s, key)
        assert (p.person_name, p.person_id) == ("Dr Jane Doe", "GMC1234")
        assert p.actor == f"key:{p.key_id}:jd"


def test_an_edit_and_a_signature_record_the_person(client, keys):
    from app.db.models import StudyEvent
    from app.db.session import session_scope
    from app.security.keys import create_key

    with session_scope() as s:
        row, key = create_key(s, "clinician", "jd", person_name="Dr Jane Doe",
                              person_id="GMC1234")
        key_id = row.id
    jane = _bearer(key)
    rid = _a_draft()
    url = f"/api/v1/reports/{rid}"
    etag = client.get(url, headers=jane).headers["ETag"]
    edited = client.patch(url, json={"sections": {"impression": "Normal."}},
                          headers={**jane, "If-Match": etag})
    assert edited.status_code == 200, edited.text
    person = {"name": "Dr Jane Doe", "id": "GMC1234", "key_id": key_id}
    v = edited.json()["version"]
    assert v["author"] == f"Dr Jane Doe (key {key_id})" and v["by"] == person
    assert v["signed_by"] is None

    signed = client.post(f"{url}/sign", headers={**jane, "If-Match": edited.headers["ETag"]})
    assert signed.status_code == 200, signed.text
    v = signed.json()["version"]
    assert v["author"] == f"Dr Jane Doe (key {key_id})"
    assert v["by"] == person and v["signed_by"] == person
    first = signed.json()["versions"][0]
    assert first["author_kind"] == "model" and first["by"] is None
    with session_scope() as s:
        event = s.scalar(select(StudyEvent).where(StudyEvent.kind == "signed"))
        assert event.detail["by"] == f"Dr Jane Doe (key {key_id})"
        assert event.detail["signed_by"] == person

    # the audit trail keeps the key as its actor
    events = client.get("/api/v1/admin/audit", params={"action": "report.sign"},
                        headers=keys["admin"]).json()["events"]
    assert [e["actor"] for e in events] == [f"key:{key_id}:jd"]


def test_an_old_clinician_key_without_a_person_reads_but_cannot_sign(client, keys):
    from app.db.models import ApiKey
    from app.db.session import session_scope
    from app.security.keys import create_key

    with session_scope() as s:
        row, key = create_key(s, "clinician", "legacy", person_name="someone")
        # as migration 0006 leaves a key issued before people were recorded
        s.get(ApiKey, row.id).person_name = ""
    old = _bearer(key)
    assert client.get("/api/v1/whoami", headers=old).status_code == 200
    rid = _a_draft()
    url = f"/api/v1/reports/{rid}"
    r = client.get(url, headers=old)
    assert r.status_code == 200
    refused = client.post(f"{url}/sign", headers={**old, "If-Match": r.headers["ETag"]})
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["type"] == "urn:medgate:problem:key-without-person"
    assert "--person" in problem["detail"] and "issue" in problem["detail"]
    assert client.get(url, headers=old).json()["state"] == "draft"
    events = client.get("/api/v1/admin/audit", params={"action": "report.sign"},
                        headers=keys["admin"]).json()["events"]
    assert [e["outcome"] for e in events] == ["refused"]
