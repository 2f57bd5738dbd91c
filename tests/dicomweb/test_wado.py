"""WADO-RS (PS3.18 10.4): what comes back is byte for byte what was stored, for every file
pydicom ships that MedGate accepts; metadata, bulk data, 404 and 406."""

from __future__ import annotations

import re
import shutil
import sqlite3
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from sqlalchemy import select

from tests.conftest import configure_env
from tests.dicomweb.conftest import multipart, stow_headers

REFERENCED, FAILED = "00081199", "00081198"

# Files pydicom reads that MedGate refuses, and why (PS3.18 Table I.2-2 failure reasons).
EXPECTED_REFUSALS = {
    "MR_truncated.dcm": 0xC000,           # Pixel Data runs past the end of the file
    "rtplan_truncated.dcm": 0xC000,       # a value runs past the end of the file
    "meta_missing_tsyntax.dcm": 0xC000,   # no Transfer Syntax UID in the file meta
    "JPEGLSNearLossless_08.dcm": 0xA900,  # no StudyInstanceUID / SeriesInstanceUID
    "JPEGLSNearLossless_16.dcm": 0xA900,
    "SC_rgb_jls_lossy_line.dcm": 0xA900,
    "SC_rgb_jls_lossy_sample.dcm": 0xA900,
    "UN_sequence.dcm": 0xA900,
    "no_meta_group_length.dcm": 0xA900,
    "priv_SQ.dcm": 0xA900,
    "empty_charset_LEI.dcm": 0xA900,      # no SOP Class / Instance UID either
    "nested_priv_SQ.dcm": 0xA900,
    "DICOMDIR-empty.dcm": 0xA900,         # a media directory, not a composite instance
    "badVR.dcm": 0xA900,                  # Number of Frames '1A': its pixels cannot be framed
}


def _dicom_test_files() -> tuple[list[Path], list[Path]]:
    """pydicom's test files (and pydicom-data's, when installed): (read by pydicom, not)."""
    folders = [Path(get_testdata_file("CT_small.dcm")).parent]
    try:
        import pydicom_data  # type: ignore[import-not-found]

        folders.append(Path(pydicom_data.__file__).parent)
    except ImportError:
        pass
    readable, unreadable = [], []
    for path in sorted(p for folder in folders for p in folder.rglob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - e.g. no File Meta Information
            unreadable.append(path)
            continue
        readable.append(path)
    return readable, unreadable


def _rounds(files: list[Path]) -> list[list[Path]]:
    """Several test files share a SOP Instance UID (one image in many transfer syntaxes); each
    round holds at most one of them, and goes to a fresh MedGate."""
    by_uid: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.get("SOPInstanceUID", "") or ds.file_meta.get(
            "MediaStorageSOPInstanceUID", "") or path.name)
        by_uid[uid].append(path)
    rounds: list[list[Path]] = [[] for _ in range(max(len(v) for v in by_uid.values()))]
    for group in by_uid.values():
        for i, path in enumerate(group):
            rounds[i].append(path)
    return rounds


def split_multipart(response) -> list[tuple[str, bytes]]:
    """An independent, simple reading of a multipart/related response: (type, content)."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1)
    pieces = (b"\r\n" + response.content).split(b"\r\n--" + boundary.encode())
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        head, _, content = piece.partition(b"\r\n\r\n")
        ctype = re.search(rb"(?i)content-type:\s*([^\r\n]+)", head).group(1).decode()
        parts.append((ctype, content))
    return parts


def _values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on its odd test files
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_retrieve_returns_the_stored_bytes_of_every_accepted_pydicom_test_file(
        medgate, keys, monkeypatch, tmp_path):
    from app.main import create_app

    files, unreadable = _dicom_test_files()
    assert len(files) > 50
    template = tmp_path / "template.db"  # migrated, keys in, nothing stored yet
    with sqlite3.connect(medgate.db_url.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(template) as dst:
        src.backup(dst)
    stored: dict[str, str] = {}  # file name -> transfer syntax
    refused: dict[str, int] = {}
    for number, round_files in enumerate(_rounds(files)):
        if number:  # a fresh store and database (a copy of the migrated one, keys included)
            db = tmp_path / f"round{number}.db"
            shutil.copy(template, db)
            configure_env(monkeypatch, tmp_path / f"round{number}", f"sqlite:///{db}")
        with TestClient(create_app()) as client:
            for start in range(0, len(round_files), 30):
                batch = round_files[start:start + 30]
                r = client.post("/dicomweb/studies",
                                content=multipart([p.read_bytes() for p in batch]),
                                headers=stow_headers(keys["pacs"]))
                assert r.status_code in (200, 202, 400, 409), r.text
                urls = {_values(i, "00081155")[0]: _values(i, "00081190")[0]
                        for i in _values(r.json(), REFERENCED)}
                for path in batch:
                    data = path.read_bytes()
                    uid = str(pydicom.dcmread(path, stop_before_pixels=True,
                                              force=True).get("SOPInstanceUID", ""))
                    if uid not in urls:
                        alone = client.post("/dicomweb/studies", content=multipart([data]),
                                            headers=stow_headers(keys["pacs"]))
                        [failure] = _values(alone.json(), FAILED)
                        refused[path.name] = _values(failure, "00081197")[0]
                        continue
                    got = client.get(urls[uid].removeprefix("http://testserver"),
                                     headers=keys["clinician"])
                    assert got.status_code == 200
                    [(ctype, content)] = split_multipart(got)
                    assert content == data, f"{path.name}: retrieved bytes differ"
                    tsuid = str(pydicom.dcmread(path, stop_before_pixels=True)
                                .file_meta.TransferSyntaxUID)
                    assert ctype == f"application/dicom; transfer-syntax={tsuid}"
                    stored[path.name] = tsuid
                    meta = client.get(urls[uid].removeprefix("http://testserver") + "/metadata",
                                      headers=keys["clinician"])
                    [item] = meta.json()
                    assert item["00080018"]["Value"] == [uid]
                    loaded = pydicom.Dataset.from_json(item, lambda *a: b"")
                    assert loaded.SOPInstanceUID == uid
            if number == 0 and unreadable:  # what pydicom cannot read, MedGate refuses too
                r = client.post("/dicomweb/studies",
                                content=multipart([p.read_bytes() for p in unreadable]),
                                headers=stow_headers(keys["pacs"]))
                assert r.status_code == 400
                assert [_values(i, "00081197") for i in _values(r.json(), FAILED)] == [
                    [0xC000]] * len(unreadable)
    unexpected = {n: hex(c) for n, c in refused.items() if EXPECTED_REFUSALS.get(n) != c}
    assert not unexpected, f"refused, not as listed in EXPECTED_REFUSALS: {unexpected}"
    present = {n for n in EXPECTED_REFUSALS if any(p.name == n for p in files)}
    assert present <= set(refused), f"accepted but expected refused: {present - set(refused)}"
    assert len(stored) >= 50
    syntaxes = set(stored.values())
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
               "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
               "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
               "1.2.840.10008.1.2.4.91"):
        assert ts in syntaxes, f"transfer syntax {ts} not covered"


@pytest.fixture
def three(client, keys):
    """CT (explicit VR little endian), MR (RLE) and a JPEG baseline secondary capture."""
    names = ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    data = {n: Path(get_testdata_file(n)).read_bytes() for n in names}
    r = client.post("/dicomweb/studies", content=multipart(list(data.values())),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    return {n: (pydicom.dcmread(get_testdata_file(n)), data[n]) for n in names}


def _url(ds, level: str = "instance") -> str:
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        url += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        url += f"/instances/{ds.SOPInstanceUID}"
    return url


def test_study_series_and_instance_retrieval_and_metadata(client, keys, three):
    ct, ct_bytes = three["CT_small.dcm"]
    for level in ("study", "series", "instance"):
        r = client.get(_url(ct, level), headers=keys["clinician"])
        assert r.status_code == 200
        assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
        assert [c for _, c in split_multipart(r)] == [ct_bytes]
        meta = client.get(_url(ct, level) + "/metadata", headers=keys["clinician"])
        assert meta.headers["content-type"] == "application/dicom+json"
        [item] = meta.json()
        assert item["00080018"] == {"vr": "UI", "Value": [ct.SOPInstanceUID]}
        assert item["00280030"]["Value"] == [float(v) for v in ct.PixelSpacing]
        assert "00020010" not in item  # file meta is not part of the dataset
    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as session:
        actions = session.scalars(select(AuditEvent.action).where(
            AuditEvent.action.like("dicomweb.%"))).all()
    assert actions.count("dicomweb.retrieve") == 3 and actions.count("dicomweb.metadata") == 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bulk_data_uris_of_metadata_answer_native_and_compressed_pixel_data(client, keys,
                                                                           three):
    ct, _ = three["CT_small.dcm"]
    [meta] = client.get(_url(ct) + "/metadata", headers=keys["clinician"]).json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/7FE00010")
    r = client.get(uri.removeprefix("http://testserver"), headers=keys["clinician"])
    assert [(t, c) for t, c in split_multipart(r)] == [("application/octet-stream",
                                                       ct.PixelData)]
    sc, _ = three["SC_rgb_jpeg_dcmtk.dcm"]
    r = client.get(_url(sc) + "/bulkdata/7FE00010", headers=keys["clinician"])
    frames = list(generate_frames(sc.PixelData, number_of_frames=1))
    assert split_multipart(r) == [
        ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", frames[0])]
    assert client.get(_url(sc) + "/bulkdata/00100010",
                      headers=keys["clinician"]).status_code == 404


def test_unknown_uids_are_404_problems(client, keys, three):
    ct, _ = three["CT_small.dcm"]
    other = pydicom.uid.generate_uid()
    for path in (f"/dicomweb/studies/{other}", f"/dicomweb/studies/{ct.StudyInstanceUID}"
                 f"/series/{other}", _url(ct).rsplit("/", 1)[0] + f"/{other}",
                 f"/dicomweb/studies/{other}/metadata"):
        r = client.get(path, headers=keys["clinician"])
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_accept_negotiation(client, keys, three):
    ct, _ = three["CT_small.dcm"]
    explicit_le = "1.2.840.10008.1.2.1"

    def status(url, accept):
        return client.get(url, headers={**keys["clinician"], "Accept": accept}).status_code

    for accept in ("*/*", 'multipart/related; type="application/dicom"',
                   'multipart/related; type="application/dicom"; transfer-syntax=*',
                   f"multipart/related; type=application/dicom; transfer-syntax={explicit_le}",
                   'application/json, multipart/related; type="application/dicom"; q=0.5'):
        assert status(_url(ct), accept) == 200, accept
    for accept in ("application/dicom+json", 'multipart/related; type="image/jpeg"',
                   'multipart/related; type="application/dicom"; '
                   "transfer-syntax=1.2.840.10008.1.2.4.50"):
        assert status(_url(ct), accept) == 406, accept
    assert status(_url(ct, "study"), f'multipart/related; type="application/dicom"; '
                                     f"transfer-syntax={explicit_le}") == 200
    assert status(_url(ct) + "/metadata", 'multipart/related; type="application/dicom"') == 406
    assert status(_url(ct) + "/metadata", "application/json") == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_retrieval_needs_a_reading_role(client, keys, three):
    ct, _ = three["CT_small.dcm"]
    assert client.get(_url(ct)).status_code == 401
    for role in ("pacs", "clinician", "admin"):
        assert client.get(_url(ct), headers=keys[role]).status_code == 200
