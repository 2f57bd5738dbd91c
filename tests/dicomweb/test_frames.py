"""WADO-RS frames (PS3.18 10.4.1.1.4, 8.7.3.5): byte for byte what pydicom cuts from the stored
Pixel Data, as stored (``transfer-syntax=*``) or decoded to native little endian; 400, 404, 406;
and the BulkDataURIs of /metadata as OHIF follows them."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import pack_bits
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.dicomweb.conftest import make_instance, multipart, stow_headers

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LIVER_SEG = SHARED / "ct" / "ct-3slice" / "liver_seg.dcm"
AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # OHIF's
NATIVE = "multipart/related; type=application/octet-stream"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def renamed(path: Path | str) -> tuple[pydicom.Dataset, bytes]:
    """A test file with a fresh SOP Instance UID (several of pydicom's share one)."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue())), buf.getvalue()


def one_bit_odd() -> tuple[pydicom.Dataset, bytes]:
    """Three 3x3 frames at BitsAllocated 1: frames 2 and 3 start inside a byte (PS3.5 8.1.1)."""
    pixels = np.array([[[1, 0, 1], [0, 1, 0], [1, 1, 1]], [[0, 0, 1], [1, 0, 0], [0, 1, 1]],
                       [[1, 1, 0], [0, 0, 0], [1, 0, 1]]], dtype=np.uint8)
    data = make_instance(Rows=3, Columns=3, BitsAllocated=1, BitsStored=1, HighBit=0,
                         NumberOfFrames=3, PixelData=pack_bits(pixels))
    return pydicom.dcmread(io.BytesIO(data)), data


def parts(response) -> list[tuple[dict[str, str], bytes]]:
    """An independent reading of a multipart/related response: (headers, content)."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1)
    pieces = (b"\r\n" + response.content).split(b"\r\n--" + boundary.encode())
    out = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        head, _, content = piece.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        out.append(({k.lower(): v for k, v in headers.items()}, content))
    return out


def url(ds: pydicom.Dataset) -> str:
    return (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


@pytest.fixture
def stored(client, keys):
    """Native single-frame CT, native 15-frame RT Dose (implicit VR), RLE 2-frame RGB,
    JPEG 2000, JPEG baseline 30-frame YBR, JPEG lossless (no decoder installed here) and a
    1-bit multi-frame image; keyed by file name."""
    files = {n: renamed(get_testdata_file(n)) for n in (
        "CT_small.dcm", "rtdose.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm",
        "examples_ybr_color.dcm", "SC_rgb_jpeg_gdcm.dcm")}
    files["one_bit"] = one_bit_odd()
    r = client.post("/dicomweb/studies", content=multipart([b for _, b in files.values()]),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    return {n: ds for n, (ds, _) in files.items()}


def get(client, keys, path, accept=AS_STORED):
    return client.get(path, headers={**keys["clinician"], "Accept": accept})


@SQLITE
def test_native_frames_as_stored_are_slices_of_pixel_data(client, keys, stored):
    ct = stored["CT_small.dcm"]
    r = get(client, keys, url(ct) + "/frames/1")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"')
    [(headers, content)] = parts(r)
    assert content == ct.PixelData
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert headers["content-location"] == f"http://testserver{url(ct)}/frames/1"
    dose = stored["rtdose.dcm"]  # implicit VR little endian, 32 bits, 15 frames
    size = dose.Rows * dose.Columns * 4
    r = get(client, keys, url(dose) + "/frames/15,1,3")
    assert [c for _, c in parts(r)] == [dose.PixelData[i * size:(i + 1) * size]
                                        for i in (14, 0, 2)]
    assert [h["content-location"].rsplit("/", 1)[1] for h, _ in parts(r)] == ["15", "1", "3"]


@SQLITE
def test_encapsulated_frames_as_stored_are_the_compressed_bytes(client, keys, stored):
    for name, media, numbers in (("SC_rgb_rle_2frame.dcm", "image/dicom-rle", [2, 1]),
                                 ("JPEG2000.dcm", "image/jp2", [1]),
                                 ("examples_ybr_color.dcm", "image/jpeg", [1, 17, 30]),
                                 ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg", [1])):
        ds = stored[name]
        expected = list(generate_frames(ds.PixelData, number_of_frames=ds.get(
            "NumberOfFrames", 1)))
        r = get(client, keys, url(ds) + "/frames/" + ",".join(map(str, numbers)))
        assert r.status_code == 200, (name, r.text)
        tsuid = ds.file_meta.TransferSyntaxUID
        assert [(h["content-type"], c) for h, c in parts(r)] == [
            (f"{media}; transfer-syntax={tsuid}", expected[n - 1]) for n in numbers], name
        # asking by the stored syntax's own media type gives the same
        same = get(client, keys, url(ds) + f"/frames/{numbers[0]}",
                   f'multipart/related; type="{media}"; transfer-syntax={tsuid}')
        assert same.status_code == 200 and parts(same)[0][1] == expected[numbers[0] - 1]


@SQLITE
def test_transcoding_request_gives_the_pixels_pydicom_decodes(client, keys, stored):
    for name, numbers in (("SC_rgb_rle_2frame.dcm", [1, 2]), ("JPEG2000.dcm", [1]),
                          ("examples_ybr_color.dcm", [5]), ("rtdose.dcm", [2]),
                          ("CT_small.dcm", [1])):
        ds = stored[name]
        arr = ds.pixel_array
        arr = arr[None] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else arr
        for accept in (NATIVE, f"{NATIVE}; transfer-syntax={EXPLICIT_LE}"):
            r = get(client, keys, url(ds) + "/frames/" + ",".join(map(str, numbers)), accept)
            assert r.status_code == 200, (name, r.text)
            got = parts(r)
            assert [h["content-type"] for h, _ in got] == [
                f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"] * len(numbers)
            assert [c for _, c in got] == [arr[n - 1].astype(arr.dtype.newbyteorder("<"))
                                           .tobytes() for n in numbers], name


@SQLITE
def test_one_bit_frames_are_repacked_from_bit_zero(client, keys, stored):
    ds = stored["one_bit"]
    arr = ds.pixel_array
    for accept in (AS_STORED, NATIVE):
        r = get(client, keys, url(ds) + "/frames/1,2,3", accept)
        assert [c for _, c in parts(r)] == [pack_bits(arr[i]) for i in range(3)]


@SQLITE
def test_frames_of_a_real_segmentation(client, keys):
    if not LIVER_SEG.exists():
        pytest.skip(f"{LIVER_SEG} is absent (shared test data)")
    ds = pydicom.dcmread(LIVER_SEG)
    r = client.post("/dicomweb/studies", content=multipart([LIVER_SEG.read_bytes()]),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    size = ds.Rows * ds.Columns // 8
    got = parts(get(client, keys, url(ds) + "/frames/3,1"))
    assert [c for _, c in got] == [ds.PixelData[2 * size:3 * size], ds.PixelData[:size]]


@SQLITE
def test_frame_numbers_out_of_range_are_404_and_malformed_lists_400(client, keys, stored):
    ct, dose = stored["CT_small.dcm"], stored["rtdose.dcm"]
    for path in (url(ct) + "/frames/2", url(dose) + "/frames/1,16",
                 url(ct).rsplit("/", 1)[0] + f"/{generate_uid()}/frames/1"):
        r = get(client, keys, path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")
    assert "15 frame" in get(client, keys, url(dose) + "/frames/16").json()["detail"]
    for frames in ("0", "-1", "a", "1,,2", "1,", "1.5", "%20", ""):
        r = get(client, keys, url(ct) + f"/frames/{frames}")
        assert r.status_code == 400, frames
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"] == "urn:medgate:problem:bad-frame-list"


@SQLITE
def test_syntaxes_that_cannot_be_produced_are_406(client, keys, stored):
    ct, lossless = stored["CT_small.dcm"], stored["SC_rgb_jpeg_gdcm.dcm"]
    for accept in ('multipart/related; type="image/jpeg"',
                   f"{NATIVE}; transfer-syntax=1.2.840.10008.1.2.4.50",
                   "application/dicom", "image/png"):
        r = get(client, keys, url(ct) + "/frames/1", accept)
        assert r.status_code == 406, accept
        assert r.headers["content-type"].startswith("application/problem+json")
    # JPEG lossless has no decoder installed here: as stored only, and the answer says why
    r = get(client, keys, url(lossless) + "/frames/1", NATIVE)
    assert r.status_code == 406
    assert "no decoder for JPEG Lossless" in r.json()["detail"]
    # a later, lower-q range that can be produced wins
    r = get(client, keys, url(lossless) + "/frames/1", f"{NATIVE}, {AS_STORED}; q=0.5")
    assert r.status_code == 200
    assert parts(r)[0][0]["content-type"].startswith("image/jpeg")


@SQLITE
def test_frames_need_a_reading_role_and_are_audited(client, keys, stored):
    from app.db.models import AuditEvent
    from app.db.session import session_scope

    ct = stored["CT_small.dcm"]
    assert client.get(url(ct) + "/frames/1").status_code == 401
    for role in ("pacs", "clinician", "admin"):
        assert client.get(url(ct) + "/frames/1", headers=keys[role]).status_code == 200
    get(client, keys, url(ct) + "/frames/9")
    with session_scope() as session:
        outcomes = session.scalars(select(AuditEvent.outcome).where(
            AuditEvent.action == "dicomweb.frames")).all()
    assert sorted(outcomes) == ["failure"] + ["success"] * 3


def test_accept_absent_or_any_gives_frames_as_stored(client, keys, stored):
    ds = stored["SC_rgb_rle_2frame.dcm"]
    expected = list(generate_frames(ds.PixelData, number_of_frames=2))
    for accept in ("*/*", "multipart/related", 'multipart/related; type="image/x-dicom-rle"'):
        r = get(client, keys, url(ds) + "/frames/2", accept)
        assert r.status_code == 200, accept
        assert parts(r)[0][1] == expected[1]
    r = client.get(url(ds) + "/frames/2", headers=keys["clinician"])
    assert parts(r)[0][1] == expected[1]


@SQLITE
def test_pixel_data_bulk_data_uri_is_absolute_and_retrievable_as_ohif_asks(
        client, keys, stored, monkeypatch):
    from app.config import reset_settings

    monkeypatch.setenv("MEDGATE_PUBLIC_URL", "https://pacs.example/medgate/")
    reset_settings()
    ds = stored["examples_ybr_color.dcm"]
    series = url(ds).rsplit("/instances/", 1)[0]
    for path in (series + "/metadata", url(ds) + "/metadata"):
        [item] = [i for i in client.get(path, headers=keys["clinician"]).json()
                  if i["00080018"]["Value"] == [ds.SOPInstanceUID]]
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri == f"https://pacs.example/medgate{url(ds)}/bulkdata/7FE00010"
    r = get(client, keys, uri.removeprefix("https://pacs.example/medgate"), AS_STORED)
    assert r.status_code == 200
    assert [c for _, c in parts(r)] == list(generate_frames(ds.PixelData, number_of_frames=30))
    ct = stored["CT_small.dcm"]
    r = get(client, keys, url(ct) + "/bulkdata/7FE00010", AS_STORED)
    assert [c for _, c in parts(r)] == [ct.PixelData]


@SQLITE
def test_stored_pixels_that_cannot_be_framed_are_422_not_500(client, keys, medgate):
    """As tests/badinput/test_wado_unframeable.py: a file stored before the store compared
    pixel data with the transfer syntax; here replaced on disk behind the index's back."""
    from app.db.models import Instance
    from app.db.session import session_scope

    ds, data = renamed(get_testdata_file("CT_small.dcm"))
    r = client.post("/dicomweb/studies", content=multipart([data]),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text
    ds.NumberOfFrames = 3  # Pixel Data holds one frame
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with session_scope() as session:
        row = session.scalar(select(Instance))
        (medgate.store_dir / row.path).write_bytes(buf.getvalue())
    assert get(client, keys, url(ds) + "/frames/1").status_code == 200
    for path in ("/frames/3", "/frames/2/rendered"):
        r = get(client, keys, url(ds) + path, "*/*")
        assert r.status_code == 422, (path, r.text)
        assert r.json()["type"] == "urn:medgate:problem:unframeable-pixel-data"
