"""The same SOP Instance from two channels: C-STORE (dcmtk storescu, pynetdicom) and STOW-RS,
encoded differently on each. The same data set is the same instance (success, nothing new, the
first copy kept); a different data set under the same SOP Instance UID is refused 0x0111."""

from __future__ import annotations

import copy
import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, build_context

from app.dicom.equivalence import same_data_set
from tests.conftest import tool
from tests.dicomweb.conftest import multipart, stow_headers
from tests.dimse.conftest import PYDICOM_FILES, RunningSCP

CT_FILE = PYDICOM_FILES / "CT_small.dcm"
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FAILED, REFERENCED, FAILURE_REASON = "00081198", "00081199", "00081197"


def encoded(ds: pydicom.Dataset, tsuid: str = ImplicitVRLittleEndian,
            preamble: bytes | None = None) -> bytes:
    """``ds`` as a Part 10 file in a native transfer syntax ``tsuid``."""
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = tsuid
    ds.file_meta.ImplementationClassUID = "1.2.3.4.5"  # another writer
    if preamble is not None:
        ds.preamble = preamble
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=tsuid == ImplicitVRLittleEndian,
               little_endian=True)
    return buf.getvalue()


def storescu(scp: RunningSCP, path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("storescu"), "-v", "-aec", scp.settings.ae_title, "-aet",
                           "STORESCU", "-R", *options, "127.0.0.1", str(scp.port), str(path)],
                          capture_output=True, text=True, timeout=60)


def c_store(scp: RunningSCP, ds: pydicom.Dataset) -> int:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(*scp.address, ae_title=scp.settings.ae_title, contexts=[
        build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])])
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def stow(client, keys, *parts: bytes):
    r = client.post("/dicomweb/studies", content=multipart(list(parts)),
                    headers=stow_headers(keys["pacs"]))
    body = r.json()
    reasons = [i[FAILURE_REASON]["Value"][0] for i in body.get(FAILED, {}).get("Value", [])]
    return r.status_code, len(body.get(REFERENCED, {}).get("Value", [])), reasons


def first_copy(scp: RunningSCP, sop: str) -> tuple[str, str, bytes]:
    row = scp.instance(sop)
    return row.sha256, row.transfer_syntax_uid, scp.stored_path(sop).read_bytes()


def test_storescu_then_stow_rs_re_encoded_implicit_is_the_same_instance(scp, client, keys):
    ct = pydicom.dcmread(CT_FILE)
    sent = storescu(scp, CT_FILE, "-xe")  # Explicit VR Little Endian
    assert sent.returncode == 0, sent.stderr
    kept = first_copy(scp, ct.SOPInstanceUID)
    assert kept[1] == ExplicitVRLittleEndian

    implicit = encoded(ct, ImplicitVRLittleEndian, preamble=b"\x01" * 128)
    assert implicit != CT_FILE.read_bytes()
    assert stow(client, keys, implicit) == (200, 1, [])
    assert scp.counts() == (1, 1, 1)  # no new row
    assert first_copy(scp, ct.SOPInstanceUID) == kept  # the first copy is kept
    assert len(scp.stored_files()) == 1


def test_a_changed_element_under_the_same_uid_is_refused_0111_on_both_channels(
        scp, client, keys, tmp_path):
    ct = pydicom.dcmread(CT_FILE)
    assert storescu(scp, CT_FILE, "-xe").returncode == 0
    kept = first_copy(scp, ct.SOPInstanceUID)

    changed = copy.deepcopy(ct)
    changed.PatientName = "Someone^Else"
    changed_path = tmp_path / "changed.dcm"
    changed.save_as(changed_path, enforce_file_format=True)
    sent = storescu(scp, changed_path, "-xe")
    # dcmtk has no name for the general status: "Received Store Response (Unknown Status:
    # 0x111)"
    assert sent.returncode != 0 and "Status: 0x111" in sent.stderr, sent.stderr
    assert c_store(scp, changed) == 0x0111

    assert stow(client, keys, encoded(changed)) == (409, 0, [0x0111])
    assert scp.counts() == (1, 1, 1)
    assert first_copy(scp, ct.SOPInstanceUID) == kept


@SQLITE
def test_stow_rs_implicit_first_then_c_store_explicit_is_the_same_instance(scp, client, keys):
    ct = pydicom.dcmread(CT_FILE)
    assert stow(client, keys, encoded(ct)) == (200, 1, [])
    kept = first_copy(scp, ct.SOPInstanceUID)
    assert kept[1] == ImplicitVRLittleEndian
    assert c_store(scp, ct) == 0x0000  # Explicit VR Little Endian over C-STORE
    assert scp.counts() == (1, 1, 1)
    assert first_copy(scp, ct.SOPInstanceUID) == kept


@SQLITE
def test_one_changed_pixel_is_another_instance(scp, client, keys):
    ct = pydicom.dcmread(CT_FILE)
    assert c_store(scp, ct) == 0x0000
    pixels = bytearray(ct.PixelData)
    pixels[1000] ^= 0x01
    changed = copy.deepcopy(ct)
    changed.PixelData = bytes(pixels)
    assert stow(client, keys, encoded(changed)) == (409, 0, [0x0111])
    assert c_store(scp, changed) == 0x0111


@SQLITE
def test_two_encodings_in_one_stow_request_are_one_instance(scp, client, keys):
    ct = pydicom.dcmread(CT_FILE)
    assert stow(client, keys, encoded(ct, ExplicitVRLittleEndian), encoded(ct)) == (200, 2, [])
    assert scp.counts() == (1, 1, 1)
    assert first_copy(scp, ct.SOPInstanceUID)[1] == ExplicitVRLittleEndian


@SQLITE
def test_a_compressed_copy_with_the_same_pixels_is_the_same_instance(scp, client, keys):
    ct = pydicom.dcmread(CT_FILE)
    assert c_store(scp, ct) == 0x0000
    kept = first_copy(scp, ct.SOPInstanceUID)
    rle = copy.deepcopy(ct)
    rle.compress(RLELossless, generate_instance_uid=False)
    buf = io.BytesIO()
    rle.save_as(buf, enforce_file_format=True)
    assert stow(client, keys, buf.getvalue()) == (200, 1, [])
    assert first_copy(scp, ct.SOPInstanceUID) == kept


def test_the_comparison_rule(tmp_path):
    ct = pydicom.dcmread(CT_FILE)
    a = tmp_path / "a.dcm"
    a.write_bytes(CT_FILE.read_bytes())

    def file(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    assert same_data_set(a, file("implicit.dcm", encoded(ct)))
    assert same_data_set(a, file("meta.dcm", encoded(ct, ExplicitVRLittleEndian, b"x" * 128)))
    private = copy.deepcopy(ct)
    private.private_block(0x0009, "MEDGATE TEST", create=True).add_new(0x01, "LO", "note")
    assert same_data_set(file("p1.dcm", encoded(private, ExplicitVRLittleEndian)),
                         file("p2.dcm", encoded(private)))  # private element read as UN
    assert not same_data_set(a, file("private.dcm", encoded(private)))
    missing = copy.deepcopy(ct)
    del missing.StudyDescription
    assert not same_data_set(a, file("missing.dcm", encoded(missing)))
    assert not same_data_set(a, file("broken.dcm", b"not dicom"))
