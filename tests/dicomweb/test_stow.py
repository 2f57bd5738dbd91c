"""STOW-RS (PS3.18 10.5) through the real app on SQLite and PostgreSQL: status codes, failure
reasons, duplicates, and bad uploads that must leave no file and no row behind."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from tests.dicomweb.conftest import (
    assert_nothing_stored,
    make_instance,
    multipart,
    row_counts,
    stored_files,
    stow_headers,
)

FAILED, REFERENCED, FAILURE_REASON = "00081198", "00081199", "00081197"
SOP_UID, RETRIEVE_URL = "00081155", "00081190"
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step: not storage


def _values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def _reasons(body: dict) -> list[int]:
    return [_values(i, FAILURE_REASON)[0] for i in _values(body, FAILED)]


def _post(client, auth, parts, path="/dicomweb/studies", **kw):
    return client.post(path, content=multipart(parts, **kw), headers=stow_headers(auth))


def test_stow_of_valid_instances_answers_200_with_retrieve_urls(client, keys, medgate):
    study = pydicom.uid.generate_uid()
    parts = [make_instance(study=study) for _ in range(3)]
    r = _post(client, keys["pacs"], parts)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert FAILED not in body
    refs = _values(body, REFERENCED)
    assert len(refs) == 3
    assert _values(body, RETRIEVE_URL) == [f"http://testserver/dicomweb/studies/{study}"]
    for ref in refs:
        assert _values(ref, RETRIEVE_URL)[0].startswith(
            f"http://testserver/dicomweb/studies/{study}/series/")
    assert len([p for p in stored_files(medgate.store_dir) if p.suffix == ".dcm"]) == 3
    assert row_counts()["instance"] == 3

    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as session:
        events = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "dicomweb.store")).all()
        assert [(e.resource_id, e.outcome, e.detail["stored"]) for e in events] == [
            (study, "success", 3)]


def test_partial_failure_is_202_with_a_failure_reason_per_refused_part(client, keys, medgate):
    good = make_instance()
    unsupported = make_instance(sop_class=MPPS_SOP_CLASS)
    r = _post(client, keys["pacs"], [good, b"this is not DICOM", unsupported])
    assert r.status_code == 202, r.text
    body = r.json()
    assert _reasons(body) == [0xC000, 0x0122]
    failed = _values(body, FAILED)
    assert _values(failed[1], SOP_UID) == [pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(unsupported)).SOPInstanceUID]
    assert len(_values(body, REFERENCED)) == 1
    assert row_counts()["instance"] == 1


def test_stow_to_a_study_refuses_instances_of_another_study_with_a900(client, keys):
    study = pydicom.uid.generate_uid()
    r = _post(client, keys["pacs"], [make_instance(study=study), make_instance()],
              path=f"/dicomweb/studies/{study}")
    assert r.status_code == 202, r.text
    assert _reasons(r.json()) == [0xA900]
    assert _values(r.json(), RETRIEVE_URL) == [f"http://testserver/dicomweb/studies/{study}"]
    # All of them from another study: nothing stored, a conflict (PS3.18 Table 10.5.3-1).
    r = _post(client, keys["pacs"], [make_instance()], path=f"/dicomweb/studies/{study}")
    assert r.status_code == 409
    assert _reasons(r.json()) == [0xA900]


def test_duplicate_with_identical_bytes_is_success_and_adds_nothing(client, keys, medgate):
    data = make_instance()
    assert _post(client, keys["pacs"], [data]).status_code == 200
    before = (row_counts(), sorted(stored_files(medgate.store_dir)))
    r = _post(client, keys["pacs"], [data])
    assert r.status_code == 200
    assert len(_values(r.json(), REFERENCED)) == 1
    assert (row_counts(), sorted(stored_files(medgate.store_dir))) == before


def test_duplicate_with_different_bytes_gets_0111_and_the_first_copy_is_kept(client, keys,
                                                                               medgate):
    sop, study, series = (pydicom.uid.generate_uid() for _ in range(3))
    first = make_instance(sop=sop, study=study, series=series, PatientName="First^Copy")
    second = make_instance(sop=sop, study=study, series=series, PatientName="Second^Copy")
    assert _post(client, keys["pacs"], [first]).status_code == 200
    r = _post(client, keys["pacs"], [second])
    assert r.status_code == 409
    assert _reasons(r.json()) == [0x0111]
    [path] = [p for p in stored_files(medgate.store_dir) if p.suffix == ".dcm"]
    assert path.read_bytes() == first


SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE
def test_content_type_spellings_are_accepted(client, keys):
    for content_type in ('multipart/related; type="application/dicom"; boundary=b1',
                         "multipart/related; type=application/dicom; boundary=b1",
                         'multipart/related; boundary="b1"; type="application/dicom"',
                         'Multipart/Related; Type="application/dicom"; Boundary="b1"'):
        r = client.post("/dicomweb/studies",
                        content=multipart([make_instance()], boundary="b1"),
                        headers={**keys["pacs"], "Content-Type": content_type})
        assert r.status_code == 200, (content_type, r.text)


def _cut_file() -> bytes:
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    return data[:len(data) - 5000]


BAD_PARTS = [
    ("not DICOM", lambda: b"%PDF-1.4 certainly not a DICOM file", 400, 0xC000),
    ("pydicom's MR_truncated.dcm",
     lambda: open(get_testdata_file("MR_truncated.dcm"), "rb").read(), 400, 0xC000),
    ("a file cut 5000 bytes short", _cut_file, 400, 0xC000),
    ("no SOPInstanceUID", lambda: make_instance(SOPInstanceUID=None), 409, 0xA900),
    ("no StudyInstanceUID", lambda: make_instance(StudyInstanceUID=None), 409, 0xA900),
    ("a non-storage SOP class", lambda: make_instance(sop_class=MPPS_SOP_CLASS), 409, 0x0122),
    ("an empty part", lambda: b"", 400, 0xC000),
]


def test_bad_instance_is_refused_with_its_reason_and_stores_nothing(client, keys, medgate):
    for what, make, status, reason in BAD_PARTS:
        r = _post(client, keys["pacs"], [make()])
        assert r.status_code == status, (what, r.text)
        assert r.headers["content-type"] == "application/dicom+json"
        assert _reasons(r.json()) == [reason], what
        assert REFERENCED not in r.json()
        assert_nothing_stored(medgate.store_dir)


@SQLITE
def test_part_that_is_not_application_dicom_fails_with_c000(client, keys, medgate):
    body = multipart([make_instance()], part_type="application/pdf")
    r = client.post("/dicomweb/studies", content=body, headers=stow_headers(keys["pacs"]))
    assert r.status_code == 400
    assert _reasons(r.json()) == [0xC000]
    assert_nothing_stored(medgate.store_dir)


@SQLITE
def test_wrong_media_type_is_415_and_wrong_boundary_400_and_nothing_is_stored(client, keys,
                                                                               medgate):
    for content_type, status in [
        ("application/dicom", 415),
        ("application/json", 415),
        ('multipart/related; type="application/dicom+json"; boundary=test-boundary', 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
        ('multipart/related; type="application/dicom"; boundary=not-the-one', 400),
    ]:
        r = client.post("/dicomweb/studies", content=multipart([make_instance()]),
                        headers={**keys["pacs"], "Content-Type": content_type})
        assert r.status_code == status, (content_type, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert_nothing_stored(medgate.store_dir)
    r = client.post("/dicomweb/studies", content=multipart([make_instance()]),
                    headers={**stow_headers(keys["pacs"]), "Accept": "application/dicom+xml"})
    assert r.status_code == 406
    assert_nothing_stored(medgate.store_dir)


@SQLITE
def test_body_without_close_delimiter_stores_nothing(client, keys, medgate):
    body = multipart([make_instance(), make_instance()])
    r = client.post("/dicomweb/studies", content=body[:-len("--test-boundary--\r\n") - 2],
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 400
    assert "close delimiter" in r.json()["detail"]
    assert_nothing_stored(medgate.store_dir)


def test_upload_over_the_size_limit_is_413_and_stores_nothing(client, keys, medgate,
                                                              monkeypatch):
    from app.config import reset_settings

    monkeypatch.setenv("MEDGATE_MAX_UPLOAD_BYTES", "100000")
    reset_settings()
    small, big = make_instance(), make_instance(pixels=120_000)
    # Declared length over the limit: refused before the body is read.
    r = _post(client, keys["pacs"], [small, big])
    assert r.status_code == 413
    assert r.json()["type"] == "urn:medgate:problem:payload-too-large"
    assert_nothing_stored(medgate.store_dir)
    # No length (chunked): the limit is hit while streaming; the first, complete part is
    # not kept either.
    body = multipart([small, big])
    r = client.post("/dicomweb/studies", content=iter([body[:50_000], body[50_000:]]),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 413
    assert_nothing_stored(medgate.store_dir)
    assert _post(client, keys["pacs"], [small]).status_code == 200


@SQLITE
def test_stow_needs_a_pacs_key(client, keys, medgate):
    body = multipart([make_instance()])
    assert client.post("/dicomweb/studies", content=body,
                       headers=stow_headers({})).status_code == 401
    r = client.post("/dicomweb/studies", content=body, headers=stow_headers(keys["clinician"]))
    assert r.status_code == 403
    assert_nothing_stored(medgate.store_dir)
    assert client.post("/dicomweb/studies", content=body,
                       headers=stow_headers(keys["admin"])).status_code == 200
