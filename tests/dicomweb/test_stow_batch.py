"""STOW-RS batches after the ingest work (group-committed fsyncs, headers parsed from the bytes
kept while spooling): one bad part among ten costs only itself, every acknowledged file is
fsynced with its folder before the answer, and a header longer than the kept bytes is read
from the file."""

from __future__ import annotations

import pydicom
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from app.dicom import store
from tests.dicomweb.conftest import make_instance, multipart, row_counts, stored_files, stow_headers

FAILED, REFERENCED, FAILURE_REASON, SOP_UID = "00081198", "00081199", "00081197", "00081155"


def _values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def _uid(part: bytes) -> str:
    return pydicom.dcmread(DicomBytesIO(part), stop_before_pixels=True).SOPInstanceUID


def test_one_bad_part_in_ten_leaves_the_other_nine_stored_and_nothing_of_it(client, keys,
                                                                            medgate):
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    parts = [make_instance(study=study, series=series, pixels=4096) for _ in range(10)]
    bad = parts[4][:-1000]  # its pixel data cut short: a whole header, a truncated file
    parts[4] = bad
    r = client.post("/dicomweb/studies", content=multipart(parts),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 202, r.text
    body = r.json()
    failed = _values(body, FAILED)
    assert len(failed) == 1 and _values(failed[0], FAILURE_REASON) == [0xC000]
    acknowledged = {_values(ref, SOP_UID)[0] for ref in _values(body, REFERENCED)}
    assert acknowledged == {_uid(p) for i, p in enumerate(parts) if i != 4}
    assert _uid(bad) not in acknowledged
    files = stored_files(medgate.store_dir)
    assert {p.stem for p in files} == acknowledged  # nothing left in tmp, no file of the bad one
    assert row_counts()["instance"] == 9

    from app.db.models import Instance
    from app.db.session import session_scope

    with session_scope() as session:
        uids = set(session.scalars(select(Instance.sop_instance_uid)))
    assert uids == acknowledged


def test_every_acknowledged_file_and_its_folder_is_fsynced(client, keys, medgate,
                                                           monkeypatch):
    synced_files, synced_dirs = [], []
    fsync_file, fsync_dir = store._fsync_file, store._fsync_dir
    monkeypatch.setattr(store, "_fsync_file", lambda p: (synced_files.append(p), fsync_file(p)))
    monkeypatch.setattr(store, "_fsync_dir", lambda p: (synced_dirs.append(p), fsync_dir(p)))
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    parts = [make_instance(study=study, series=series) for _ in range(10)]
    r = client.post("/dicomweb/studies", content=multipart(parts),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    assert len(set(synced_files)) == 10  # each spooled file, before its rename
    series_dir = medgate.store_dir / study / series
    # the series folder once (the new file names), the study folder and the store root once
    # each (the new folder names)
    assert sorted(synced_dirs) == sorted([series_dir, series_dir.parent, medgate.store_dir])


def test_a_header_longer_than_the_kept_bytes_is_read_from_the_file(client, keys, medgate):
    # Image Comments (0020,4000) sorts before Rows and Columns (0028,xxxx): the Image Pixel
    # module lies past the first HEAD_BYTES and must still be checked
    long = "x" * (store.HEAD_BYTES + 5000)
    part = make_instance(pixels=4096, ImageComments=long)
    truncated = make_instance(pixels=4096, ImageComments=long)[:-100]
    r = client.post("/dicomweb/studies", content=multipart([part, truncated]),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 202, r.text
    body = r.json()
    assert [_values(ref, SOP_UID)[0] for ref in _values(body, REFERENCED)] == [_uid(part)]
    assert [_values(f, FAILURE_REASON) for f in _values(body, FAILED)] == [[0xC000]]
    stored = [p for p in stored_files(medgate.store_dir) if p.suffix == ".dcm"]
    assert [p.read_bytes() for p in stored] == [part]
