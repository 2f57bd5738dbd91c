"""DICOMweb against a real uvicorn server on a loopback port: dicomweb-client, interrupted
uploads, a large streamed upload in bounded memory, and the `medgate ingest` command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.conftest import ROOT, wait_for
from tests.dicomweb.conftest import (
    assert_nothing_stored,
    make_instance,
    multipart,
    row_counts,
    stored_files,
    stow_headers,
)

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE
def test_dicomweb_client_stores_searches_and_retrieves(live):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=live.dicomweb, headers={"Authorization": live.token("pacs")})
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]
    originals = {n: pydicom.dcmread(get_testdata_file(n)) for n in names}
    response = client.store_instances(list(originals.values()))
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response

    ct = originals["CT_small.dcm"]
    studies = client.search_for_studies(search_filters={"PatientName": "compressedsamples^c?1"})
    assert {s["0020000D"]["Value"][0] for s in studies} == {ct.StudyInstanceUID}
    by_modality = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert {s["0020000D"]["Value"][0] for s in by_modality} == {
        originals["MR_small.dcm"].StudyInstanceUID}
    series = client.search_for_series(ct.StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [ct.SeriesInstanceUID]
    instances = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                            fields=["Rows"])
    assert instances[0]["00080018"]["Value"] == [ct.SOPInstanceUID]
    assert instances[0]["00280010"]["Value"] == [ct.Rows]

    [study] = client.retrieve_study(ct.StudyInstanceUID)
    [from_series] = client.retrieve_series(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    instance = client.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                        ct.SOPInstanceUID)
    for ds in (study, from_series, instance):
        assert ds.SOPInstanceUID == ct.SOPInstanceUID
        assert ds.PixelData == ct.PixelData
    metadata = client.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                                 ct.SOPInstanceUID)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": str(ct.PatientName)}]
    assert "BulkDataURI" in metadata["7FE00010"]
    assert "Value" not in metadata["7FE00010"] and "InlineBinary" not in metadata["7FE00010"]

    reader = DICOMwebClient(url=live.dicomweb,
                            headers={"Authorization": live.token("clinician")})
    assert len(reader.search_for_instances()) == 3


def _cut_off_upload(live, body: bytes) -> None:
    def send():
        yield body[:len(body) // 2]
        time.sleep(0.1)
        raise ConnectionAbortedError("the sender's network went away")

    with pytest.raises((ConnectionAbortedError, httpx.HTTPError)):
        httpx.post(f"{live.dicomweb}/studies", content=send(),
                   headers=stow_headers(live.keys["pacs"]), timeout=20)


def _short_body_over_raw_socket(live, body: bytes) -> None:
    """Content-Length promises more than is sent; then the sender closes."""
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: {live.token('pacs')}\r\n"
                "Content-Type: multipart/related; type=\"application/dicom\"; "
                f"boundary=test-boundary\r\nContent-Length: {len(body) + 10_000}\r\n\r\n")
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        try:
            sock.recv(1024)
        except OSError:
            pass


def _store_failures() -> int:
    from sqlalchemy import func, select

    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "dicomweb.store", AuditEvent.outcome == "failure"))


def test_upload_cut_off_mid_stream_stores_nothing_and_the_study_is_not_stuck(live):
    study = pydicom.uid.generate_uid()
    parts = [make_instance(study=study, pixels=300_000) for _ in range(3)]
    body = multipart(parts)
    for number, interrupt in enumerate((_cut_off_upload, _short_body_over_raw_socket), 1):
        interrupt(live, body)
        # The failure's audit event is written after the temporary files are removed.
        wait_for(lambda n=number: _store_failures() >= n, timeout=20, what="the refusal")
        assert_nothing_stored(live.store_dir)
    r = httpx.post(f"{live.dicomweb}/studies", content=body,
                   headers=stow_headers(live.keys["pacs"]), timeout=30)
    assert r.status_code == 200, r.text
    assert row_counts()["instance"] == 3

    from app.db.models import Study
    from app.db.session import session_scope

    with session_scope() as session:
        [row] = session.query(Study).all()
        assert (row.study_uid, row.state) == (study, "receiving")


@SQLITE
def test_fifty_megabyte_upload_streams_through_bounded_memory(live):
    study = pydicom.uid.generate_uid()
    parts = [make_instance(study=study, pixels=5_000_000) for _ in range(10)]
    headers = stow_headers(live.keys["pacs"])

    def body():
        for part in parts:
            yield b"--test-boundary\r\nContent-Type: application/dicom\r\n\r\n"
            for i in range(0, len(part), 256 * 1024):
                yield part[i:i + 256 * 1024]
            yield b"\r\n"
        yield b"--test-boundary--\r\n"

    tracemalloc.start()
    try:
        r = httpx.post(f"{live.dicomweb}/studies", content=body(), headers=headers, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert sum(len(p) for p in parts) > 50_000_000
    assert len(r.json()["00081199"]["Value"]) == 10
    # Client and server share this process: both together stay far below one part (5 MB).
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert {p.name for p in stored_files(live.store_dir / "tmp")} == set()


@SQLITE
def test_medgate_ingest_sends_a_folder_and_reports_failures(live, shared_data, tmp_path):
    folder = tmp_path / "incoming"
    shutil.copytree(shared_data / "ct" / "ct-3slice", folder / "ct")
    (folder / "notes.txt").write_text("not DICOM: skipped")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), folder / "truncated.dcm")
    env = {**os.environ, "MEDGATE_API_KEY": live.token("pacs").removeprefix("Bearer ")}
    run = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(folder), "--url",
                          live.url, "--batch", "2"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 1, out
    assert "stored 4" in out and "failed 1" in out and "skipped (not DICOM) 1" in out, out
    assert "truncated.dcm" in out and "0xC000 cannot understand" in out, out
    assert row_counts()["instance"] == 4

    again = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(folder / "ct"),
                            "--url", live.url], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "stored 4" in " ".join(again.stderr.split())
    assert row_counts()["instance"] == 4
