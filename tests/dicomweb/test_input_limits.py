"""Input that used to be cut, overflow or leave rows behind (issue 10, items 4, 6 and 7): a UID
over 64 characters is refused, not shortened into another instance's; integers beyond the
database's range are refused with a specific status instead of a 500; and an instance refused
for a series conflict leaves no patient or study row. SQLite and PostgreSQL."""

from __future__ import annotations

from pydicom.uid import generate_uid

from tests.badinput.corpus import deflate_bomb
from tests.dicomweb.conftest import (
    make_instance,
    multipart,
    row_counts,
    stored_files,
    stow_headers,
)

FAILED, FAILURE_REASON = "00081198", "00081197"
LONG = "1.2.826.0.1.3680043.10.999." + "7" * 40  # 67 characters
HUGE = "99999999999999999999"


def _post(client, auth, parts):
    return client.post("/dicomweb/studies", content=multipart(parts), headers=stow_headers(auth))


def _failure(body: dict) -> tuple[int, str]:
    item = body[FAILED]["Value"][0]
    return item[FAILURE_REASON]["Value"][0], body


def test_uids_over_64_characters_are_refused_and_nothing_is_cut(client, keys, medgate):
    assert len(LONG) > 64
    first = make_instance(sop=LONG[:64])  # what cutting would have turned the next one into
    assert _post(client, keys["pacs"], [first]).status_code == 200
    before = row_counts()
    for field in ("sop", "study", "series"):
        r = _post(client, keys["pacs"], [make_instance(**{field: LONG})])
        assert r.status_code == 409, (field, r.text)
        reason, _ = _failure(r.json())
        assert reason == 0xA900
        assert row_counts() == before, field
    letters = make_instance(sop="1.2.840.abc.1")
    r = _post(client, keys["pacs"], [letters])
    assert r.status_code == 409 and _failure(r.json())[0] == 0xA900
    assert len([p for p in stored_files(medgate.store_dir) if p.suffix == ".dcm"]) == 1


def test_integers_beyond_the_database_range_get_a_specific_status(client, keys, medgate):
    study = generate_uid()
    huge = make_instance(study=study, SeriesNumber=HUGE, InstanceNumber=HUGE)
    assert _post(client, keys["pacs"], [huge]).status_code == 200  # stored; number unindexed
    pacs, clin, admin = keys["pacs"], keys["clinician"], keys["admin"]
    # a limit above the server's is capped with a Warning (PS3.18 8.3.4.4), never an error
    assert client.get(f"/dicomweb/studies?limit={HUGE}", headers=pacs).status_code == 200
    for url in (f"/dicomweb/studies?offset={HUGE}",
                f"/dicomweb/studies/{study}/instances?InstanceNumber={HUGE}",
                f"/dicomweb/studies/{study}/series?SeriesNumber={HUGE}"):
        r = client.get(url, headers=pacs)
        assert r.status_code == 400, (url, r.text)
        assert "at most" in r.text or "out of range" in r.text
    r = client.get(f"/dicomweb/studies/{study}/instances", headers=pacs)
    assert r.status_code == 200 and len(r.json()) == 1
    for url, key in ((f"/api/v1/reports/{HUGE}", clin), (f"/api/v1/reports/1/versions/{HUGE}",
                                                         clin),
                     (f"/api/v1/reports?offset={HUGE}", clin),
                     (f"/api/v1/studies?offset={HUGE}", clin),
                     (f"/api/v1/admin/audit?offset={HUGE}", admin)):
        r = client.get(url, headers=key)
        assert r.status_code == 422, (url, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = client.delete(f"/api/v1/admin/keys/{HUGE}", headers=admin)
    assert r.status_code == 422
    r = client.post(f"/api/v1/reports/{HUGE}/sign", headers={**clin, "If-Match": "*"})
    assert r.status_code == 422


def test_an_instance_refused_for_a_series_conflict_leaves_no_rows(client, keys, medgate):
    series = generate_uid()
    assert _post(client, keys["pacs"], [make_instance(series=series)]).status_code == 200
    before = row_counts()
    other = make_instance(series=series, study=generate_uid(), PatientID="PID-OTHER",
                          PatientName="Other^Person")
    r = _post(client, keys["pacs"], [other])
    assert r.status_code == 409 and _failure(r.json())[0] == 0xA900
    assert row_counts() == before
    found = client.get("/dicomweb/studies?PatientID=PID-OTHER", headers=keys["pacs"])
    assert found.status_code in (200, 204) and not (found.content and found.json())


def test_a_deflate_bomb_is_refused_while_inflating(client, keys, medgate, monkeypatch):
    from pydicom.data import get_testdata_file

    from app.config import get_settings, reset_settings

    assert get_settings().max_inflated_bytes == 256 * 1024**2
    monkeypatch.setenv("MEDGATE_MAX_INFLATED_BYTES", str(8 * 1024**2))
    reset_settings()
    bomb = deflate_bomb(64 * 1024**2)
    assert len(bomb) < 200_000
    before = row_counts()
    r = _post(client, keys["pacs"], [bomb])
    assert r.status_code in (400, 409), r.text
    assert _failure(r.json())[0] == 0xA700
    assert row_counts() == before and stored_files(medgate.store_dir) == []
    # an ordinary deflated instance still stores
    ok = open(get_testdata_file("image_dfl.dcm"), "rb").read()
    assert _post(client, keys["pacs"], [ok]).status_code == 200
