"""The viewer in a real browser: Debian's chromium driven by Playwright against a real MedGate.

A clinician signs in through the sign-in page, sees the study list, and opens a CT study with
its liver SEG and a DX radiograph; each viewport must show an image (not a blank canvas) and
the SEG series must be listed. Screenshots are kept as test artefacts: in the folder
MEDGATE_TEST_ARTEFACTS names (``viewer-*.png``), else in the test's tmp folder.

Skipped, saying why, where the viewer (`make viewer`) or chromium is not installed; under
CI=true both must be there and the test fails instead.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import shared_file, unavailable

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

CT_FILES = ("ct/ct-3slice/01.dcm", "ct/ct-3slice/02.dcm", "ct/ct-3slice/03.dcm",
            "ct/ct-3slice/liver_seg.dcm")
DX_FILE = "cxr/dx_image.dcm"
VIEWPORT = "canvas.cornerstone-canvas"
# A rendered CT slice or radiograph varies by tens of grey levels; a black canvas by none.
MIN_STD = 10.0


@pytest.fixture
def chromium(medgate) -> str:
    from app.viewer.ohif import Package

    package = Package(medgate.ohif_dir)  # the settings as this test's environment says
    if not package.installed:
        unavailable(f"the OHIF viewer is not installed at {package.root} (make viewer)")
    path = shutil.which("chromium")
    if path is None:
        unavailable("chromium is not installed (make system-tools: apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        unavailable("playwright is not installed (the dev extras: pip install -e '.[dev]')")
    return path


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MEDGATE_TEST_ARTEFACTS") or tmp_path / "artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _store(live, rels: tuple[str, ...]) -> None:
    import httpx

    body = b""
    for rel in rels:
        body += (b"--b\r\nContent-Type: application/dicom\r\n\r\n"
                 + shared_file(rel).read_bytes() + b"\r\n")
    body += b"--b--\r\n"
    r = httpx.post(f"{live.url}/dicomweb/studies", content=body, timeout=60, headers={
        **live.keys["pacs"], "Accept": "application/dicom+json",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 200, r.text


def _dismiss(page) -> None:  # noqa: ANN001
    """OHIF's first-visit tour and its investigational-use banner cover part of the image."""
    for label in ("Skip all", "Confirm and hide"):
        button = page.get_by_text(label, exact=True)
        if button.count() and button.first.is_visible():
            button.first.click()


def _viewport_std(page) -> tuple[float, bytes]:  # noqa: ANN001
    """The standard deviation of the middle of the viewport in a screenshot, and the PNG.
    The middle half leaves out the corner overlays (dates, orientation letters)."""
    import numpy as np
    from PIL import Image

    box = page.locator(VIEWPORT).first.bounding_box()
    png = page.screenshot()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    x0, y0 = int(box["x"] + box["width"] / 4), int(box["y"] + box["height"] / 4)
    x1, y1 = int(box["x"] + 3 * box["width"] / 4), int(box["y"] + 3 * box["height"] / 4)
    return float(img[y0:y1, x0:x1].std()), png


def _open_study(page, live, uid: str, name: str, artefacts: Path) -> float:  # noqa: ANN001
    page.goto(f"{live.url}/viewer/viewer?StudyInstanceUIDs={uid}")
    page.wait_for_selector(VIEWPORT, timeout=90_000)
    deadline = time.monotonic() + 90
    std, png = 0.0, b""
    while time.monotonic() < deadline:  # the image arrives after the canvas
        _dismiss(page)
        std, png = _viewport_std(page)
        if std >= MIN_STD:
            break
        time.sleep(1)
    (artefacts / f"viewer-{name}.png").write_bytes(png)
    return std


def test_a_clinician_signs_in_and_sees_ct_with_its_seg_and_a_radiograph(
        chromium, live_viewer, artefacts):
    import pydicom
    from playwright.sync_api import sync_playwright

    live = live_viewer
    _store(live, CT_FILES)
    _store(live, (DX_FILE,))
    ct = pydicom.dcmread(shared_file(CT_FILES[0]), stop_before_pixels=True)
    seg = pydicom.dcmread(shared_file(CT_FILES[3]), stop_before_pixels=True)
    dx = pydicom.dcmread(shared_file(DX_FILE), stop_before_pixels=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and "/dicomweb/" in r.url else None)

            # no session: the viewer sends the browser to sign in, then back
            page.goto(f"{live.url}/viewer/")
            assert "/viewer/sign-in" in page.url
            page.fill("#key", live.key("clinician"))
            page.click("button[type=submit]")
            page.wait_for_url(f"{live.url}/viewer/", timeout=30_000)
            cookie = next(c for c in page.context.cookies() if c["name"] == "medgate_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # the study list, read from MedGate's QIDO-RS with the cookie
            for study in (ct, dx):
                page.get_by_text(study.AccessionNumber, exact=True).wait_for(timeout=60_000)
            page.screenshot(path=str(artefacts / "viewer-study-list.png"))

            ct_std = _open_study(page, live, ct.StudyInstanceUID, "ct", artefacts)
            page.get_by_text(seg.SeriesDescription).first.wait_for(timeout=30_000)
            dx_std = _open_study(page, live, dx.StudyInstanceUID, "dx", artefacts)
        finally:
            browser.close()

    assert ct_std >= MIN_STD, f"the CT viewport is blank (std {ct_std:.1f}); see {artefacts}"
    assert dx_std >= MIN_STD, f"the DX viewport is blank (std {dx_std:.1f}); see {artefacts}"
    assert errors == [], errors
