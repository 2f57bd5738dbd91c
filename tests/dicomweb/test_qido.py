"""QIDO-RS (PS3.18 10.6) matching, returned attributes and paging, on SQLite and PostgreSQL."""

from __future__ import annotations

import pydicom
import pytest
from sqlalchemy import select

from tests.dicomweb.conftest import make_instance, multipart, stow_headers

# DB-specific SQL (wildcards, ranges, paging) runs on both databases; the rest on SQLite.
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def _uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.999.{n}"


A, B, C = _uid(1), _uid(2), _uid(3)
A_CT, A_MR, B_CR, C_CT = _uid(11), _uid(12), _uid(21), _uid(31)


@pytest.fixture
def loaded(client, keys):
    """Three studies: A (CT with two images + MR), B (CR), C (CT)."""
    def inst(study, series, n, **attrs):
        return make_instance(study=study, series=series, sop=_uid(100 + n), InstanceNumber=n,
                             **attrs)

    a = dict(PatientName="Doe^John", PatientID="P1", StudyDate="20230105",
             StudyDescription="Chest CT", SeriesDate="20230105")
    b = dict(PatientName="Doe^Jane", PatientID="P2", StudyDate="20240220")
    c = dict(PatientName="Smith^Anna", PatientID="P3", StudyDate="20220710")
    parts = [inst(A, A_CT, 1, Modality="CT", SeriesNumber=1, **a),
             inst(A, A_CT, 2, Modality="CT", SeriesNumber=1, **a),
             inst(A, A_MR, 3, Modality="MR", SeriesNumber=2, **a),
             inst(B, B_CR, 4, Modality="CR", **b),
             inst(C, C_CT, 5, Modality="CT", **c)]
    r = client.post("/dicomweb/studies", content=multipart(parts),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    return client


def _get(client, keys, path, role="clinician", **params):
    r = client.get(f"/dicomweb{path}", params=params, headers=keys[role])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    return r.json()


def _uids(results, tag=STUDY_UID) -> list[str]:
    return [r[tag]["Value"][0] for r in results]


def test_study_matching(loaded, keys):
    q = lambda **p: set(_uids(_get(loaded, keys, "/studies", **p)))  # noqa: E731
    assert q() == {A, B, C}
    assert q(PatientName="Doe*") == {A, B}
    assert q(PatientName="doe^j?ne") == {B}
    assert q(PatientName="*nna") == {C}
    assert q(StudyDate="20230101-20231231") == {A}
    assert q(StudyDate="-20230101") == {C}
    assert q(StudyDate="20230101-") == {A, B}
    assert q(StudyDate="20240220") == {B}
    assert q(ModalitiesInStudy="MR") == {A}
    assert q(ModalitiesInStudy="CR,MR") == {A, B}
    assert q(StudyInstanceUID=f"{A},{C}") == {A, C}
    assert q(**{"0020000D": B}) == {B}
    assert q(PatientID="P3", fuzzymatching="false") == {C}
    r = loaded.get("/dicomweb/studies", params=[("StudyInstanceUID", A), ("StudyInstanceUID", B)],
                   headers=keys["clinician"])
    assert set(_uids(r.json())) == {A, B}
    assert _get(loaded, keys, "/studies", PatientName="Nobody") == []


@SQLITE
def test_study_results_carry_the_default_attributes(loaded, keys):
    [a] = _get(loaded, keys, "/studies", StudyInstanceUID=A)
    assert a["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert a["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert a["00201206"]["Value"] == [2] and a["00201208"]["Value"] == [3]
    assert a["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{A}"]
    assert a["00080020"] == {"vr": "DA", "Value": ["20230105"]}


@SQLITE
def test_includefield_from_the_index_and_from_the_stored_headers(loaded, keys):
    [a] = _get(loaded, keys, "/studies", StudyInstanceUID=A,
               includefield="IssuerOfPatientID,00280010,SeriesDate,PerformingPhysicianName")
    assert a["00280010"] == {"vr": "US", "Value": [1]}  # Rows, read from a stored header
    assert a["00080021"] == {"vr": "DA", "Value": ["20230105"]}
    assert a["00081050"] == {"vr": "PN"}  # asked for, absent: empty
    assert "00100021" in a
    [inst] = _get(loaded, keys, f"/studies/{A}/series/{A_MR}/instances", includefield="all")
    assert inst["00280011"]["Value"] == [64]  # Columns: the whole header came along
    assert inst["00080060"]["Value"] == ["MR"]
    assert "7FE00010" not in inst or "Value" not in inst["7FE00010"]


def test_limit_and_offset_page_through_studies_newest_first(loaded, keys):
    assert _uids(_get(loaded, keys, "/studies")) == [B, A, C]
    assert _uids(_get(loaded, keys, "/studies", limit=1, offset=1)) == [A]
    assert _uids(_get(loaded, keys, "/studies", limit=2, offset=2)) == [C]
    r = loaded.get("/dicomweb/studies", params={"limit": 2}, headers=keys["clinician"])
    assert len(r.json()) == 2 and "offset=2" not in r.headers.get("warning", "")


def test_series_and_instance_levels(loaded, keys):
    series = _get(loaded, keys, f"/studies/{A}/series")
    assert _uids(series, SERIES_UID) == [A_CT, A_MR]
    assert series[0]["00201209"]["Value"] == [2]
    assert _uids(_get(loaded, keys, f"/studies/{A}/series", Modality="MR"), SERIES_UID) == [A_MR]
    flat = _get(loaded, keys, "/series", Modality="CT")
    assert set(_uids(flat, SERIES_UID)) == {A_CT, C_CT}
    assert all("00100010" in s for s in flat)  # no study in the path: study attributes too
    in_study = _get(loaded, keys, f"/studies/{A}/instances")
    assert _uids(in_study, SOP_UID) == [_uid(101), _uid(102), _uid(103)]
    assert all("0020000E" in i and "00080060" in i for i in in_study)
    in_series = _get(loaded, keys, f"/studies/{A}/series/{A_CT}/instances", InstanceNumber="2")
    assert _uids(in_series, SOP_UID) == [_uid(102)]
    assert in_series[0]["00081190"]["Value"] == [
        f"http://testserver/dicomweb/studies/{A}/series/{A_CT}/instances/{_uid(102)}"]
    [one] = _get(loaded, keys, "/instances", SOPInstanceUID=_uid(105))
    assert one["0020000D"]["Value"] == [C] and one["00100010"]["Value"] == [
        {"Alphabetic": "Smith^Anna"}]
    assert _get(loaded, keys, f"/studies/{pydicom.uid.generate_uid()}/series") == []


@SQLITE
def test_bad_queries_are_400_problems(loaded, keys):
    for params in ({"NoSuchAttribute": "x"}, {"StudyDate": "2023"}, {"limit": "many"},
                   {"Modality": "CT"}, {"includefield": "NotAKeyword"},
                   {"fuzzymatching": "maybe"}):
        r = loaded.get("/dicomweb/studies", params=params, headers=keys["clinician"])
        assert r.status_code == 400, params
        assert r.headers["content-type"].startswith("application/problem+json")


@SQLITE
def test_unsupported_fuzzymatching_answers_with_a_warning(loaded, keys):
    r = loaded.get("/dicomweb/studies", params={"fuzzymatching": "true", "PatientName": "Doe*"},
                   headers=keys["clinician"])
    assert r.status_code == 200 and len(r.json()) == 2
    assert "fuzzymatching" in r.headers["warning"]


@SQLITE
def test_search_asks_for_json_and_a_key(loaded, keys):
    r = loaded.get("/dicomweb/studies", headers={**keys["clinician"],
                                                 "Accept": "application/dicom+xml"})
    assert r.status_code == 406
    assert loaded.get("/dicomweb/studies").status_code == 401
    assert loaded.get("/dicomweb/studies", headers=keys["pacs"]).status_code == 200


@SQLITE
def test_search_writes_an_audit_event(loaded, keys):
    _get(loaded, keys, f"/studies/{A}/series")
    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as session:
        [event] = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "dicomweb.search")).all()
        assert (event.resource_type, event.resource_id, event.detail["results"]) == (
            "series", A, 2)
        assert event.actor.endswith("test-clinician")


@SQLITE
def test_includefield_on_series_and_instance_searches(loaded, keys):
    """PS3.18 10.6.1.2.2 (8.3.4.3): keywords or tags, repeated or comma separated, and all."""
    r = loaded.get(f"/dicomweb/studies/{A}/series",
                   params=[("includefield", "SeriesDate,00080021"), ("includefield", "Rows"),
                           ("includefield", "00081050"), ("Modality", "CT")],
                   headers=keys["clinician"])
    assert r.status_code == 200, r.text
    [ct] = r.json()
    assert ct["00080021"] == {"vr": "DA", "Value": ["20230105"]}  # SeriesDate, from a header
    assert ct["00280010"]["Value"] == [1]
    assert ct["00081050"] == {"vr": "PN"}  # asked for, absent
    [everything] = _get(loaded, keys, "/series", SeriesInstanceUID=A_MR, includefield="all")
    assert everything["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]  # indexed study key
    assert everything["00201209"]["Value"] == [1]  # NumberOfSeriesRelatedInstances
    instances = loaded.get(f"/dicomweb/studies/{A}/series/{A_CT}/instances",
                           params=[("includefield", "00280011"), ("includefield", "StudyDate")],
                           headers=keys["clinician"]).json()
    assert [i["00280011"]["Value"] for i in instances] == [[64], [64]]
    assert [i["00080020"]["Value"] for i in instances] == [["20230105"]] * 2
    [inst] = _get(loaded, keys, "/instances", SOPInstanceUID=_uid(103), includefield="all")
    assert inst["00080060"]["Value"] == ["MR"] and inst["00280010"]["Value"] == [1]
