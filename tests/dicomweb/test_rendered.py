"""Rendered and thumbnail resources (PS3.18 10.4.1.1.3, 8.3.5): grey levels follow the stored
value, Rescale and the VOI window formula of PS3.3 C.11.2.1.2; MONOCHROME1 inverted; colour
passed through; JPEG and PNG; viewport, quality; thumbnails small; 400, 404, 406."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from tests.dicomweb.conftest import make_instance, multipart, stow_headers
from tests.dicomweb.test_frames import renamed, url

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_CT = SHARED / "ct" / "ct-3slice" / "01.dcm"
REAL_DX = SHARED / "cxr" / "dx_image.dcm"  # MONOCHROME1
PNG = {"Accept": "image/png"}
POINTS = [(0, 0), (64, 64), (30, 90), (100, 20), (127, 127)]


def linear(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.2.1, output 0..255."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0
    if x > c - 0.5 + (w - 1) / 2:
        return 255
    return round(((x - (c - 0.5)) / (w - 1) + 0.5) * 255)


def linear_exact(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.3.2."""
    if x <= c - w / 2:
        return 0
    if x > c + w / 2:
        return 255
    return round(((x - c) / w + 0.5) * 255)


def sigmoid(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.3.1."""
    return round(255 / (1 + math.exp(-4 * (x - c) / w)))


def store(client, keys, *files: bytes) -> None:
    r = client.post("/dicomweb/studies", content=multipart(list(files)),
                    headers=stow_headers(keys["pacs"]))
    assert r.status_code == 200, r.text


def picture(r) -> Image.Image:
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content))


@pytest.fixture
def ct(client, keys):
    ds, data = renamed(get_testdata_file("CT_small.dcm"))
    store(client, keys, data)
    return ds


@SQLITE
def test_ct_window_gives_the_grey_levels_of_the_voi_formula(client, keys, ct):
    hu = ct.pixel_array.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    for window, formula in (("40,400", linear), ("40,400,linear", linear),
                            ("1000,800,linear-exact", linear_exact),
                            ("900,300,sigmoid", sigmoid)):
        c, w = (float(v) for v in window.split(",")[:2])
        img = picture(client.get(url(ct) + "/rendered", params={"window": window},
                                 headers={**keys["clinician"], **PNG}))
        assert img.format == "PNG" and img.mode == "L" and img.size == (128, 128)
        got = np.asarray(img)
        for y, x in POINTS:
            assert abs(int(got[y, x]) - formula(hu[y, x], c, w)) <= 1, (window, y, x)
        assert {formula(hu[y, x], c, w) for y, x in POINTS} != {0}  # the points are not blank


@SQLITE
def test_without_window_the_file_window_then_min_max_is_used(client, keys, ct):
    # CT_small has no window: min to max of the frame
    got = np.asarray(picture(client.get(url(ct) + "/rendered",
                                        headers={**keys["clinician"], **PNG})))
    arr = ct.pixel_array.astype(float)
    expected = np.rint((arr - arr.min()) * 255 / (arr.max() - arr.min()))
    assert np.array_equal(got, expected.astype(np.uint8))
    if not REAL_CT.exists():
        pytest.skip(f"{REAL_CT} is absent (shared test data)")
    real, data = renamed(REAL_CT)
    store(client, keys, data)
    c, w = float(real.WindowCenter), float(real.WindowWidth)
    hu = real.pixel_array.astype(float) * float(real.RescaleSlope) + float(real.RescaleIntercept)
    got = np.asarray(picture(client.get(url(real) + "/rendered",
                                        headers={**keys["clinician"], **PNG})))
    for y, x in [(256, 256), (100, 300), (400, 200), (10, 10), (300, 128)]:
        assert got[y, x] == linear(hu[y, x], c, w), (y, x)


@SQLITE
def test_monochrome1_is_inverted(client, keys):
    mono2 = make_instance(pixels=256)
    ds2 = pydicom.dcmread(io.BytesIO(mono2))
    mono1 = make_instance(study=ds2.StudyInstanceUID, series=ds2.SeriesInstanceUID,
                          pixels=256, PhotometricInterpretation="MONOCHROME1")
    ds1 = pydicom.dcmread(io.BytesIO(mono1))
    store(client, keys, mono2, mono1)
    a = np.asarray(picture(client.get(url(ds2) + "/rendered",
                                      headers={**keys["clinician"], **PNG}))).astype(int)
    b = np.asarray(picture(client.get(url(ds1) + "/rendered",
                                      headers={**keys["clinician"], **PNG}))).astype(int)
    assert np.array_equal(a, np.arange(256)[None, :])  # min 0 to max 255: the stored values
    assert np.array_equal(b, 255 - a)
    if REAL_DX.exists():  # a real MONOCHROME1 radiograph: bone bright means low values dark
        dx, data = renamed(REAL_DX)
        store(client, keys, data)
        got = np.asarray(picture(client.get(url(dx) + "/rendered",
                                            headers={**keys["clinician"], **PNG})))
        arr = dx.pixel_array.astype(float)
        c, w = float(dx.WindowCenter), float(dx.WindowWidth)
        for y, x in [(20, 20), (80, 100), (150, 60), (100, 180)]:
            assert got[y, x] == 255 - linear(arr[y, x], c, w), (y, x)


@SQLITE
def test_jpeg_by_default_png_on_request_and_406_otherwise(client, keys, ct):
    for headers, params, fmt in (({}, {}, "JPEG"), ({"Accept": "image/jpeg"}, {}, "JPEG"),
                                 ({"Accept": "image/*"}, {}, "JPEG"), (PNG, {}, "PNG"),
                                 ({"Accept": "image/gif, image/png;q=0.5"}, {}, "PNG"),
                                 ({}, {"accept": "image/png"}, "PNG")):
        r = client.get(url(ct) + "/rendered", params=params,
                       headers={**keys["clinician"], **headers})
        assert picture(r).format == fmt, (headers, params)
        assert r.headers["content-type"] == f"image/{fmt.lower()}"
    for accept in ("image/gif", "application/dicom",
                   'multipart/related; type="application/octet-stream"'):
        r = client.get(url(ct) + "/rendered", headers={**keys["clinician"], "Accept": accept})
        assert r.status_code == 406, accept
        assert r.headers["content-type"].startswith("application/problem+json")
    small = client.get(url(ct) + "/rendered", params={"quality": "5"}, headers=keys["clinician"])
    large = client.get(url(ct) + "/rendered", params={"quality": "100"},
                       headers=keys["clinician"])
    assert len(picture(small).tobytes()) and len(small.content) < len(large.content)


@SQLITE
def test_viewport_fits_keeping_the_aspect_ratio(client, keys, ct):
    tall, data = renamed(get_testdata_file("JPEG2000.dcm"))  # 256 wide, 1024 high
    store(client, keys, data)
    for ds, viewport, size in ((ct, "64,32", (32, 32)), (ct, "300,500", (300, 300)),
                               (tall, "100,100", (25, 100)), (tall, "512,512", (128, 512))):
        img = picture(client.get(url(ds) + "/rendered", params={"viewport": viewport},
                                 headers=keys["clinician"]))
        assert img.size == size, (viewport, img.size)


@SQLITE
def test_colour_passes_through_and_frames_render_one_by_one(client, keys):
    ds, data = renamed(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    store(client, keys, data)
    arr = ds.pixel_array
    for n in (1, 2):
        img = picture(client.get(url(ds) + f"/frames/{n}/rendered",
                                 headers={**keys["clinician"], **PNG}))
        assert img.mode == "RGB"
        assert np.array_equal(np.asarray(img), arr[n - 1])
    assert np.array_equal(np.asarray(picture(client.get(
        url(ds) + "/rendered", headers={**keys["clinician"], **PNG}))), arr[0])
    for path, status in (("/frames/3/rendered", 404), ("/frames/1,2/rendered", 400),
                         ("/frames/0/rendered", 400)):
        assert client.get(url(ds) + path, headers=keys["clinician"]).status_code == status


def _constant_series(client, keys, values_by_number: dict[int, int]) -> pydicom.Dataset:
    first = None
    files = []
    for number, value in values_by_number.items():
        data = make_instance(study=first and first.StudyInstanceUID,
                             series=first and first.SeriesInstanceUID, pixels=4096,
                             InstanceNumber=number, PixelData=bytes([value]) * 4096)
        first = first or pydicom.dcmread(io.BytesIO(data))
        files.append(data)
    store(client, keys, *files)
    return first


@SQLITE
def test_series_rendered_and_thumbnails_show_the_middle_instance(client, keys):
    ds = _constant_series(client, keys, {3: 30, 1: 10, 2: 20, 4: 40, 5: 50})
    series = url(ds).rsplit("/instances/", 1)[0]
    window = {"window": "128,256,linear-exact"}  # value v renders as about v
    img = picture(client.get(series + "/rendered", params=window,
                             headers={**keys["clinician"], **PNG}))
    assert img.size == (256, 16) and abs(int(np.asarray(img)[0, 0]) - 30) <= 1
    study = series.rsplit("/series/", 1)[0]
    for path in (series + "/thumbnail", study + "/thumbnail"):
        thumb = picture(client.get(path, params=window, headers={**keys["clinician"], **PNG}))
        assert thumb.size == (128, 8), path  # fits 128x128, aspect kept
        assert abs(int(np.asarray(thumb)[4, 64]) - 30) <= 1, path


@SQLITE
def test_thumbnails_are_small_jpegs_and_never_enlarged(client, keys, ct):
    thumb = picture(client.get(url(ct) + "/thumbnail", headers=keys["clinician"]))
    assert thumb.format == "JPEG" and thumb.size == (128, 128)
    tiny = make_instance(pixels=256)  # 256 wide, 1 high
    store(client, keys, tiny)
    small = pydicom.dcmread(io.BytesIO(tiny))
    img = picture(client.get(url(small) + "/thumbnail", headers=keys["clinician"]))
    assert img.size == (128, 1)  # 256x1 fits 128 wide
    assert picture(client.get(url(small) + "/frames/1/thumbnail", params={"viewport": "64,64"},
                              headers=keys["clinician"])).size == (64, 1)


@SQLITE
def test_study_thumbnail_skips_series_without_pixels(client, keys, ct):
    report = make_instance(study=ct.StudyInstanceUID, sop_class="1.2.840.10008.5.1.4.1.1.88.11",
                           Modality="SR", SeriesNumber=0, PixelData=None, Rows=None,
                           Columns=None, SamplesPerPixel=None, PhotometricInterpretation=None,
                           BitsAllocated=None, BitsStored=None, HighBit=None,
                           PixelRepresentation=None)
    store(client, keys, report)
    r = client.get(f"/dicomweb/studies/{ct.StudyInstanceUID}/thumbnail",
                   headers=keys["clinician"])
    assert picture(r).size == (128, 128)
    sr = pydicom.dcmread(io.BytesIO(report))
    r = client.get(url(sr) + "/rendered", headers=keys["clinician"])
    assert r.status_code == 404 and "no pixel data" in r.json()["detail"]


@SQLITE
def test_bad_rendering_parameters_are_400_problems(client, keys, ct):
    for params in ({"window": "a,b"}, {"window": "40"}, {"window": "40,0"},
                   {"window": "40,0.5,linear"}, {"window": "40,400,cubic"},
                   {"window": "nan,400"}, {"viewport": "0,10"}, {"viewport": "10"},
                   {"viewport": "10,10,0,0,5,5"}, {"viewport": "99999,10"},
                   {"quality": "0"}, {"quality": "101"}, {"quality": "high"}):
        r = client.get(url(ct) + "/rendered", params=params, headers=keys["clinician"])
        assert r.status_code == 400, params
        assert r.json()["type"] == "urn:medgate:problem:bad-rendering-parameter", params


@SQLITE
def test_rendering_a_syntax_without_decoder_is_406_and_roles_apply(client, keys):
    ds, data = renamed(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))  # JPEG lossless
    store(client, keys, data)
    r = client.get(url(ds) + "/rendered", headers=keys["clinician"])
    assert r.status_code == 406 and "no decoder" in r.json()["detail"]
    assert client.get(url(ds) + "/thumbnail").status_code == 401
