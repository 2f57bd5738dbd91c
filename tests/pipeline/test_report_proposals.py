"""New images after a clinician's edit never bury the clinician's text (issue 10, item 10).

An AI draft made after a person wrote the current version is stored as a proposed version: the
clinician's version stays current (same ETag, same state), the report and its worklist item say
"new images since your edit", and the clinician adopts or dismisses it. A pending report (no
version yet) can be written by hand with ``If-Match: *`` or the ETag its GET exposes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.pipeline.conftest import CT_SMALL, complete_now, store

IMPRESSION = "No acute abnormality on this limited single slice."


def another_instance(tmp_path: Path) -> Path:
    """A further instance of CT_small's study (same StudyInstanceUID, a new SOPInstanceUID)."""
    ds = pydicom.dcmread(CT_SMALL)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = tmp_path / f"{uid}.dcm"
    ds.save_as(out)
    return out


def run_queued_jobs() -> None:
    from app.db.models import Job
    from app.db.session import session_factory
    from app.pipeline.runner import execute

    with session_factory()() as s:
        ids = list(s.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.id)))
    assert ids
    for job_id in ids:
        assert execute(job_id) == "done"


def new_images(tmp_path: Path) -> None:
    """A late instance arrives, the study completes again and its new job writes a draft."""
    store(another_instance(tmp_path))
    complete_now()
    run_queued_jobs()


def drafted_report(client, clin) -> dict:
    store(CT_SMALL)
    complete_now()
    run_queued_jobs()
    (item,) = client.get("/api/v1/reports", headers=clin).json()["reports"]
    return client.get(f"/api/v1/reports/{item['id']}", headers=clin).json()


def edit(client, clin, rid, etag, text=IMPRESSION):
    r = client.patch(f"/api/v1/reports/{rid}", json={"sections": {"impression": text}},
                     headers={**clin, "If-Match": etag})
    assert r.status_code == 200, r.text
    return r


def test_new_images_after_an_edit_are_proposed_and_the_clinicians_text_stays_current(
        client, keys, tmp_path):
    from app.db.models import ReportVersion
    from app.db.session import session_factory

    clin = keys["clinician"]
    report = drafted_report(client, clin)
    rid = report["id"]
    edited = edit(client, clin, rid, report["etag"])
    etag = edited.headers["ETag"]

    new_images(tmp_path)

    r = client.get(f"/api/v1/reports/{rid}", headers=clin)
    body = r.json()
    assert body["state"] == "edited"
    assert body["version"]["number"] == 2 and body["version"]["author_kind"] == "user"
    assert body["sections"]["impression"] == IMPRESSION
    assert r.headers["ETag"] == etag == body["etag"]
    assert [(v["number"], v["author_kind"]) for v in body["versions"]] == [
        (1, "model"), (2, "user"), (3, "model")]
    proposed = body["proposed"]
    assert proposed["version"] == 3 and proposed["reason"] == "new images since your edit"
    assert proposed["sections"]["impression"] != IMPRESSION
    assert {"adopt", "dismiss"} <= set(body["allowed_actions"])
    (item,) = client.get("/api/v1/reports", headers=clin).json()["reports"]
    assert item["new_images_since_edit"] is True and item["version"] == 2

    # The clinician signs their own text with the ETag they had: the proposal is seen, recorded
    # in the signed version, and the flag goes.
    signed = client.post(f"/api/v1/reports/{rid}/sign", headers={**clin, "If-Match": etag})
    assert signed.status_code == 200, signed.text
    out = signed.json()
    assert out["state"] == "final" and out["proposed"] is None
    assert out["sections"]["impression"] == IMPRESSION and out["version"]["number"] == 4
    assert "adopt" not in out["allowed_actions"]
    with session_factory()() as s:
        v4 = s.scalar(select(ReportVersion).where(ReportVersion.report_fk == rid,
                                                  ReportVersion.number == 4))
        assert v4.content["proposal"] == {"version": 3, "resolution": "signed_over"}
        # acceptance is measured against the AI draft the clinician edited, not the proposal
        assert v4.content["acceptance"]["ai_version"] == 1
    (item,) = client.get("/api/v1/reports", headers=clin).json()["reports"]
    assert item["new_images_since_edit"] is False


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_adopt_makes_the_proposal_current_and_dismiss_keeps_the_clinicians_text(
        client, keys, tmp_path):
    clin, admin = keys["clinician"], keys["admin"]
    report = drafted_report(client, clin)
    rid = report["id"]
    url = f"/api/v1/reports/{rid}"
    no_proposal = client.post(f"{url}/adopt", headers={**clin, "If-Match": report["etag"]})
    assert no_proposal.status_code == 409
    assert "adopt" not in no_proposal.json()["allowed"]

    etag = edit(client, clin, rid, report["etag"]).headers["ETag"]
    new_images(tmp_path)
    proposal = client.get(url, headers=clin).json()["proposed"]

    assert client.post(f"{url}/adopt", headers=clin).status_code == 428
    assert client.post(f"{url}/adopt", headers={**clin, "If-Match": report["etag"]}
                       ).status_code == 412
    adopted = client.post(f"{url}/adopt", headers={**clin, "If-Match": etag})
    assert adopted.status_code == 200, adopted.text
    body = adopted.json()
    assert body["state"] == "draft" and body["proposed"] is None
    assert body["sections"] == proposal["sections"]
    assert body["version"]["number"] == 4 and body["allowed_actions"] == [
        "cancel", "edit", "sign", "withdraw"]

    # edited again, new images again, and this time the clinician keeps their text
    etag = edit(client, clin, rid, adopted.headers["ETag"]).headers["ETag"]
    new_images(tmp_path)
    assert client.get(url, headers=clin).json()["proposed"]["version"] == 6
    dismissed = client.post(f"{url}/dismiss", headers={**clin, "If-Match": etag})
    assert dismissed.status_code == 200, dismissed.text
    body = dismissed.json()
    assert body["state"] == "edited" and body["proposed"] is None
    assert body["sections"]["impression"] == IMPRESSION and body["version"]["number"] == 7
    assert body["etag"] != etag  # the dismissal is a version of its own
    assert client.get("/api/v1/reports", headers=clin).json()["reports"][0][
        "new_images_since_edit"] is False

    events = client.get("/api/v1/admin/audit", params={"resource_type": "report"},
                        headers=admin).json()["events"]
    outcomes = {(e["action"], e["outcome"]) for e in events}
    assert {("report.adopt", "success"), ("report.adopt", "stale"),
            ("report.dismiss", "success"), ("report.adopt", "conflict")} <= outcomes


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_newer_proposal_replaces_the_pending_one_which_stays_in_history(
        client, keys, tmp_path):
    clin = keys["clinician"]
    report = drafted_report(client, clin)
    rid = report["id"]
    etag = edit(client, clin, rid, report["etag"]).headers["ETag"]
    new_images(tmp_path)
    new_images(tmp_path)
    r = client.get(f"/api/v1/reports/{rid}", headers=clin)
    body = r.json()
    assert body["proposed"]["version"] == 4 and r.headers["ETag"] == etag
    assert [v["number"] for v in body["versions"]] == [1, 2, 3, 4]
    assert body["state"] == "edited" and body["version"]["number"] == 2
    old = client.get(f"/api/v1/reports/{rid}/versions/3", headers=clin)
    assert old.status_code == 200 and old.json()["version"]["author_kind"] == "model"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_signed_report_is_never_touched_by_new_images(client, keys, tmp_path):
    clin = keys["clinician"]
    report = drafted_report(client, clin)
    rid = report["id"]
    signed = client.post(f"/api/v1/reports/{rid}/sign",
                         headers={**clin, "If-Match": report["etag"]})
    assert signed.status_code == 200
    new_images(tmp_path)
    after = client.get(f"/api/v1/reports/{rid}", headers=clin).json()
    assert after["state"] == "final" and after["proposed"] is None
    assert len(after["versions"]) == 2
    items = client.get("/api/v1/reports", headers=clin).json()["reports"]
    addendum = next(i for i in items if i["id"] != rid)
    assert client.get(f"/api/v1/reports/{addendum['id']}", headers=clin).json()[
        "addendum_of"] == rid


def test_a_pending_report_is_written_by_hand_and_the_later_ai_draft_is_proposed(
        client, keys, tmp_path):
    clin = keys["clinician"]
    store(CT_SMALL)
    complete_now()  # routed and queued; the job has not run (a slow or failed job)
    (item,) = client.get("/api/v1/reports", headers=clin).json()["reports"]
    rid = item["id"]
    r = client.get(f"/api/v1/reports/{rid}", headers=clin)
    body = r.json()
    assert body["state"] == "pending" and "edit" in body["allowed_actions"]
    assert r.headers["ETag"] == body["etag"] == f'"r{rid}-v0"'

    wrote = client.patch(f"/api/v1/reports/{rid}", json={"sections": {"impression": IMPRESSION}},
                         headers={**clin, "If-Match": "*"})
    assert wrote.status_code == 200, wrote.text
    out = wrote.json()
    assert out["state"] == "edited" and out["version"]["number"] == 1
    assert out["sections"]["impression"] == IMPRESSION and out["sections"]["findings"] == ""
    # "*" stands only for "no text yet": once a version exists its own ETag is needed
    stale = client.patch(f"/api/v1/reports/{rid}", json={"sections": {"findings": "x"}},
                         headers={**clin, "If-Match": "*"})
    assert stale.status_code == 412 and stale.json()["current_etag"] == out["etag"]

    run_queued_jobs()  # the AI draft arrives after the clinician wrote the report
    after = client.get(f"/api/v1/reports/{rid}", headers=clin).json()
    assert after["state"] == "edited" and after["version"]["number"] == 1
    assert after["sections"]["impression"] == IMPRESSION
    assert after["proposed"]["version"] == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_pending_report_accepts_the_etag_its_get_exposes(client, keys):
    clin = keys["clinician"]
    store(CT_SMALL)
    complete_now()
    (item,) = client.get("/api/v1/reports", headers=clin).json()["reports"]
    url = f"/api/v1/reports/{item['id']}"
    etag = client.get(url, headers=clin).headers["ETag"]
    assert client.patch(url, json={"sections": {"impression": "x"}},
                        headers={**clin, "If-Match": '"r999-v0"'}).status_code == 412
    wrote = client.patch(url, json={"sections": {"impression": "x"}},
                         headers={**clin, "If-Match": etag})
    assert wrote.status_code == 200, wrote.text


def test_every_offered_action_has_an_endpoint_also_with_a_proposal_pending():
    from app.main import create_app
    from app.reports.lifecycle import STATES, allowed_actions

    paths = create_app().openapi()["paths"]
    routes = {(m.upper(), path) for path, ops in paths.items() for m in ops}
    for state in STATES:
        for proposal in (False, True):
            for action in allowed_actions(state, proposal=proposal):
                wanted = (("PATCH", "/api/v1/reports/{report_id}") if action == "edit"
                          else ("POST", f"/api/v1/reports/{{report_id}}/{action}"))
                assert wanted in routes, (state, action)
    assert {"adopt", "dismiss"} <= set(allowed_actions("edited", proposal=True))
    assert "adopt" not in allowed_actions("edited") and "edit" in allowed_actions("pending")
