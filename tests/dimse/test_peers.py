"""Known DICOM peers: association checks, store and query rights, their audit, the admin API
and the `medgate peers` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import select

from app.config import Settings
from app.db.models import AuditEvent
from app.db.session import session_factory, session_scope
from app.dicom import peers
from tests.conftest import tool, wait_for
from tests.dimse.conftest import PYDICOM_FILES, RunningSCP, _start, register_peers

CT_FILE = PYDICOM_FILES / "CT_small.dcm"
CT = pydicom.dcmread(CT_FILE)


def associate(scp: RunningSCP, aet: str, called: str | None = None,
              received: list | None = None) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    handlers = [(evt.EVT_ACSE_RECV, lambda e: received.append(e.primitive))] if received \
        is not None else []
    return ae.associate(*scp.address, ae_title=called or scp.settings.ae_title,
                        evt_handlers=handlers)


def find_studies(assoc: Association, **keys: str) -> list[tuple[int, pydicom.Dataset | None]]:
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    return [(s.Status, i) for s, i in
            assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind)]


def events(settings: Settings, action: str) -> list[AuditEvent]:
    with session_factory(settings.db_url)() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))


def events_soon(settings: Settings, action: str, n: int = 1) -> list[AuditEvent]:
    """The events of ``action`` once there are ``n``: the SCP audits a rejection after the
    A-ASSOCIATE-RJ has gone out, so the peer may hear of it first."""
    def enough() -> list[AuditEvent] | None:
        found = events(settings, action)
        return found if len(found) >= n else None

    return wait_for(enough, timeout=10, what=f"{n} {action} audit event(s)")


@pytest.fixture
def bare_scp(sqlite_medgate: Settings) -> Iterator[RunningSCP]:
    """An SCP with no peers registered; each test registers its own."""
    yield from _start(sqlite_medgate, peers=())


# ---------------------------------------------------------------- validation (the service)

@pytest.mark.parametrize("title, why", [
    ("", "at least one character"), ("    ", "at least one character"),
    ("A" * 17, "at most 16"), ("BAD\\AE", "backslash"), ("BAD\nAE", "control"),
    ("BÄD", "VR AE does not allow")])
def test_an_invalid_ae_title_is_refused(sqlite_medgate, title, why):
    with session_scope() as session, pytest.raises(peers.PeerError) as err:
        peers.create(session, title)
    assert err.value.kind == "invalid" and why in str(err.value)


def test_ae_titles_hosts_and_ports_are_normalised_and_checked(sqlite_medgate):
    with session_scope() as session:
        row = peers.create(session, "  PACS1 ", host="  10.1.2.3 ", port=104, can_store=True)
        assert (row.ae_title, row.host, row.port) == ("PACS1", "10.1.2.3", 104)
        assert peers.create(session, "NET", host="10.1.0.0/16").host == "10.1.0.0/16"
        assert peers.create(session, "NAMED", host="PACS.Example.org").host == "pacs.example.org"
        for bad in ({"host": "not a host!"}, {"host": "10.0.0.0/99"}, {"port": 0},
                    {"port": 65536}, {"can_store": "yes"}, {"description": "x" * 129}):
            with pytest.raises(peers.PeerError) as err:
                peers.update(session, "PACS1", **bad)
            assert err.value.kind == "invalid", bad
        with pytest.raises(peers.PeerError) as err:
            peers.create(session, "PACS1")
        assert err.value.kind == "exists"
        with pytest.raises(peers.PeerError) as err:
            peers.get(session, "NOBODY")
        assert err.value.kind == "not-found"


def test_host_matching(sqlite_medgate):
    assert peers.host_matches("", "192.0.2.7")
    assert peers.host_matches("127.0.0.1", "::ffff:127.0.0.1")  # a dual-stack listener
    assert peers.host_matches("127.0.0.0/8", "127.3.4.5")
    assert not peers.host_matches("10.0.0.0/8", "127.0.0.1")
    assert peers.host_matches("localhost", "127.0.0.1")
    assert not peers.host_matches("10.9.9.9", "127.0.0.1")


# ---------------------------------------------------------------- association

def test_an_unknown_peer_is_rejected_at_association_and_the_rejection_audited(bare_scp):
    received: list = []
    assoc = associate(bare_scp, "STRANGER", received=received)
    assert assoc.is_rejected and not assoc.is_established
    (rj,) = received
    # PS3.8 Table 9-21: rejected-permanent, service-user, calling AE title not recognised
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    (event,) = events_soon(bare_scp.settings, "dicom.associate")
    assert (event.actor, event.outcome) == ("dicom:STRANGER", "refused")
    assert event.detail["calling_ae"] == "STRANGER" and event.detail["called_ae"] == "MEDGATE"
    assert event.detail["address"] == "127.0.0.1" and event.detail["outcome"] == "rejected"
    assert "not a known peer" in event.detail["reason"]
    assert (event.detail["result"], event.detail["source"], event.detail["diagnostic"]) == \
        (1, 1, 3)


def test_a_known_peer_from_another_host_is_rejected(bare_scp):
    register_peers(bare_scp.settings, "PACS", host="10.20.30.40")
    assoc = associate(bare_scp, "PACS")
    assert assoc.is_rejected
    (event,) = events_soon(bare_scp.settings, "dicom.associate")
    assert "registered for host '10.20.30.40', not 127.0.0.1" in event.detail["reason"]


def test_a_peer_registered_for_a_network_or_any_host_is_accepted(bare_scp):
    register_peers(bare_scp.settings, "LOOPNET", host="127.0.0.0/8")
    register_peers(bare_scp.settings, "ANYWHERE", host="")
    for aet in ("LOOPNET", "ANYWHERE"):
        assoc = associate(bare_scp, aet)
        assert assoc.is_established, aet
        assoc.release()
    accepted = events(bare_scp.settings, "dicom.associate")
    assert [e.outcome for e in accepted] == ["success", "success"]
    assert accepted[0].detail["rights"] == {"store": True, "query": True, "retrieve": False}


def test_a_wrong_called_ae_title_is_rejected_with_reason_7(scp):
    received: list = []
    assoc = associate(scp, "PYSCU", called="SOMEONE_ELSE", received=received)
    assert assoc.is_rejected
    (rj,) = received
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    (event,) = events_soon(scp.settings, "dicom.associate")
    assert event.outcome == "refused" and "SOMEONE_ELSE" in event.detail["reason"]


def test_a_change_of_rights_applies_to_the_next_association_without_restart(bare_scp):
    assoc = associate(bare_scp, "LATECOMER")
    assert assoc.is_rejected
    register_peers(bare_scp.settings, "LATECOMER", can_store=False, can_query=True)
    assoc = associate(bare_scp, "LATECOMER")
    assert assoc.is_established
    assert assoc.send_c_store(CT).Status == 0x0124
    with session_scope(bare_scp.settings.db_url) as session:
        peers.update(session, "LATECOMER", "test", can_store=True)
    assert assoc.send_c_store(CT).Status == 0x0124  # this association keeps its rights
    assoc.release()
    assoc = associate(bare_scp, "LATECOMER")
    assert assoc.send_c_store(CT).Status == 0x0000
    assoc.release()
    with session_scope(bare_scp.settings.db_url) as session:
        peers.delete(session, "LATECOMER", "test")
    assert associate(bare_scp, "LATECOMER").is_rejected


def test_accept_any_admits_unknown_aes_but_known_peers_keep_their_rules(sqlite_medgate):
    demo = sqlite_medgate.model_copy(update={"dicom_accept_any_peer": True})
    for running in _start(demo, peers=()):
        register_peers(running.settings, "PINNED", host="10.20.30.40")
        assoc = associate(running, "ANYONE")
        assert assoc.is_established
        assert assoc.send_c_store(CT).Status == 0x0000
        assert [s for s, _ in find_studies(assoc)] == [0xFF00, 0x0000]
        assoc.release()
        assert associate(running, "PINNED").is_rejected
        accepted, rejected = events_soon(running.settings, "dicom.associate", 2)
        assert accepted.detail["known_peer"] is False
        assert accepted.detail["rights"] == {"store": True, "query": True, "retrieve": False}
        assert rejected.outcome == "refused" and "10.20.30.40" in rejected.detail["reason"]


# ---------------------------------------------------------------- rights

def test_a_peer_without_the_store_right_gets_0124_and_nothing_is_stored(bare_scp):
    register_peers(bare_scp.settings, "VIEWER", can_store=False, can_query=True)
    assoc = associate(bare_scp, "VIEWER")
    assert assoc.is_established
    rsp = assoc.send_c_store(CT)
    assert rsp.Status == 0x0124 and "may not store" in rsp.ErrorComment
    assoc.release()
    assert bare_scp.counts() == (0, 0, 0)
    summary = wait_for(lambda: events(bare_scp.settings, "dicom.release"), timeout=10)[0]
    assert (summary.detail["refused"], summary.detail["stored"]) == (1, 0)


def test_a_peer_without_the_query_right_gets_no_c_find_results(bare_scp):
    register_peers(bare_scp.settings, "MODALITY", can_store=True, can_query=False)
    assoc = associate(bare_scp, "MODALITY")
    assert assoc.send_c_store(CT).Status == 0x0000
    # one final response, 0x0124 Refused: Not Authorized; no pending (0xFF00) matches
    assert find_studies(assoc, PatientName="*") == [(0x0124, None)]
    assoc.release()
    (event,) = events(bare_scp.settings, "dicom.find")
    assert event.outcome == "refused" and event.detail["status"] == "0x0124"
    assert event.detail["matches"] == 0


def test_dcmtk_findscu_without_the_query_right_gets_no_results(bare_scp, tmp_path):
    import subprocess

    register_peers(bare_scp.settings, "FINDSCU", can_store=False, can_query=False)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([tool("findscu"), "-v", "-S", "-aec", "MEDGATE", "-X", "-od",
                             str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*",
                             "127.0.0.1", str(bare_scp.port)],
                            capture_output=True, text=True, timeout=60)
    # dcmtk has no name for the general status: "Received Final Find Response (Unknown
    # Status: 0x124)", and no pending response before it
    assert "Final Find Response" in result.stderr and "0x124" in result.stderr, result.stderr
    assert "Pending" not in result.stderr
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- audit of stores and queries

def test_stores_and_queries_are_audited_without_the_values_queried(scp):
    assoc = associate(scp, "PYSCU")
    assert assoc.send_c_store(CT).Status == 0x0000
    assert assoc.send_c_store(CT).Status == 0x0000  # identical copy
    found = find_studies(assoc, PatientName=str(CT.PatientName), PatientID=CT.PatientID,
                         StudyDescription="")
    assert [s for s, _ in found] == [0xFF00, 0x0000]
    assoc.release()

    (accepted,) = events(scp.settings, "dicom.associate")
    summary = wait_for(lambda: events(scp.settings, "dicom.release"), timeout=10)[0]
    assert summary.detail["association"] == accepted.detail["association"]
    assert (summary.actor, summary.outcome, summary.detail["how"]) == \
        ("dicom:PYSCU", "success", "released")
    assert {k: summary.detail[k] for k in ("stored", "identical", "failed", "finds")} == \
        {"stored": 1, "identical": 1, "failed": 0, "finds": 1}
    assert summary.detail["study_uids"] == [CT.StudyInstanceUID]
    (find,) = events(scp.settings, "dicom.find")
    assert (find.actor, find.outcome) == ("dicom:PYSCU", "success")
    assert find.detail["level"] == "STUDY" and find.detail["matches"] == 1
    assert find.detail["keys"] == ["PatientID", "PatientName"]
    text = json.dumps([find.detail, summary.detail, accepted.detail])
    assert str(CT.PatientName) not in text and CT.PatientID not in text


def test_an_audit_write_that_fails_never_changes_the_dimse_answer(scp):
    from sqlalchemy import text

    with session_scope(scp.settings.db_url) as session:
        session.execute(text("DROP TABLE audit_event"))
    assoc = associate(scp, "PYSCU")
    assert assoc.is_established
    assert assoc.send_c_store(CT).Status == 0x0000
    assert [s for s, _ in find_studies(assoc)] == [0xFF00, 0x0000]
    assoc.release()
    assert scp.counts() == (1, 1, 1)


# ---------------------------------------------------------------- settings

def test_the_scp_listens_on_the_http_host_unless_told_otherwise(monkeypatch):
    from app.config import Settings

    for key in ("MEDGATE_DICOM_HOST", "MEDGATE_HTTP_HOST"):
        monkeypatch.delenv(key, raising=False)
    assert Settings().dicom_host == "127.0.0.1"
    monkeypatch.setenv("MEDGATE_HTTP_HOST", "0.0.0.0")
    assert Settings().dicom_host == "0.0.0.0"
    monkeypatch.setenv("MEDGATE_DICOM_HOST", "192.0.2.1")
    assert Settings().dicom_host == "192.0.2.1"
    assert Settings().dicom_accept_any_peer is False and Settings().dicom_tls_port is None


# ---------------------------------------------------------------- admin API

def test_the_admin_api_manages_peers(client, keys, medgate):
    admin = keys["admin"]
    base = "/api/v1/admin/peers"
    r = client.post(base, json={"ae_title": "PACS", "host": "10.0.0.5", "port": 104,
                                "can_store": True, "can_query": True,
                                "description": "the hospital PACS"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{base}/PACS"
    assert r.json()["ae_title"] == "PACS" and r.json()["can_retrieve"] is False
    assert client.get(base, headers=admin).json()["peers"][0]["host"] == "10.0.0.5"
    r = client.patch(f"{base}/PACS", json={"can_query": False, "port": None}, headers=admin)
    assert r.status_code == 200 and (r.json()["can_query"], r.json()["port"]) == (False, None)
    assert r.json()["can_store"] is True
    assert client.get(f"{base}/PACS", headers=admin).json()["can_query"] is False
    # an AE title with a slash in it (allowed by VR AE) has its own URL
    assert client.post(base, json={"ae_title": "CT/1"}, headers=admin).status_code == 201
    assert client.get(f"{base}/CT/1", headers=admin).json()["ae_title"] == "CT/1"
    assert client.delete(f"{base}/PACS", headers=admin).json()["ae_title"] == "PACS"
    assert client.get(f"{base}/PACS", headers=admin).status_code == 404

    audit = client.get("/api/v1/admin/audit", params={"resource_type": "dicom_peer"},
                       headers=admin).json()["events"]
    actions = [(e["action"], e["resource_id"]) for e in reversed(audit)]
    assert actions == [("peer.create", "PACS"), ("peer.update", "PACS"),
                       ("peer.create", "CT/1"), ("peer.delete", "PACS")]
    update = next(e for e in audit if e["action"] == "peer.update")
    assert update["detail"]["changed"] == {"can_query": [True, False], "port": [104, None]}
    assert update["actor"].startswith("key:")


@pytest.mark.parametrize("body, status, slug", [
    ({"ae_title": "WAY_TOO_LONG_AE_TITLE"}, 422, "invalid-peer"),
    ({"ae_title": "   "}, 422, "invalid-peer"),
    ({"ae_title": "BAD\\AE"}, 422, "invalid-peer"),
    ({"ae_title": "OK", "port": 70000}, 422, "invalid-peer"),
    ({"ae_title": "OK", "can_store": "yes"}, 422, "validation-error"),
    ({"ae_title": "OK", "colour": "red"}, 422, "validation-error"),
    ({"ae_title": "TWICE"}, 409, "peer-exists")])
def test_the_admin_api_refuses_bad_peers(client, keys, medgate, body, status, slug):
    admin = keys["admin"]
    client.post("/api/v1/admin/peers", json={"ae_title": "TWICE"}, headers=admin)
    r = client.post("/api/v1/admin/peers", json=body, headers=admin)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:medgate:problem:{slug}"


def test_the_admin_api_answers_404_and_needs_the_admin_role(client, keys, medgate):
    base = "/api/v1/admin/peers"
    for method in ("get", "patch", "delete"):
        kw = {"json": {"can_store": True}} if method == "patch" else {}
        r = getattr(client, method)(f"{base}/NOBODY", headers=keys["admin"], **kw)
        assert r.status_code == 404 and r.json()["type"].endswith("not-found"), method
    assert client.patch(f"{base}/NOBODY", json={"can_store": None},
                        headers=keys["admin"]).status_code in (404, 422)
    assert client.get(base).status_code == 401
    assert client.get(base, headers=keys["pacs"]).status_code == 403
    assert client.post(base, json={"ae_title": "X"}, headers=keys["clinician"]).status_code == 403


# ---------------------------------------------------------------- CLI

def test_the_peers_commands_add_list_update_and_remove(medgate):
    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["peers", *args])

    assert run("add", "PACS", "--host", "10.0.0.5", "--port", "104", "--store", "--query",
               "--description", "main PACS").exit_code == 0
    listed = run("list")
    assert listed.exit_code == 0 and "PACS" in listed.output and "store,query" in listed.output
    assert run("update", "PACS", "--no-query", "--host", "").exit_code == 0
    with session_scope() as session:
        row = peers.get(session, "PACS")
        assert (row.host, row.can_store, row.can_query, row.port) == ("", True, False, 104)
    bad = run("add", "WAY_TOO_LONG_AE_TITLE")
    assert bad.exit_code == 2 and "at most 16" in bad.output
    assert run("add", "PACS").exit_code == 2  # exists
    assert run("remove", "PACS").exit_code == 0
    assert run("remove", "PACS").exit_code == 2  # not found
    with session_scope() as session:
        assert peers.list_peers(session) == []
        actions = [e.action for e in session.scalars(
            select(AuditEvent).where(AuditEvent.resource_type == "dicom_peer"))]
    assert actions == ["peer.create", "peer.update", "peer.delete"]
