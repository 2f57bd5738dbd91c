"""`medgate serve` with MEDGATE_HTTP_WORKERS=2: a second HTTP process serves the API on the same
listening socket (it answers and stores while the first is stopped), every instance stored by
either is indexed once, a killed HTTP process is restarted, and a server killed with SIGKILL
leaves no MedGate process behind. A real server on loopback ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.conftest import ROOT, wait_for
from tests.serve.test_supervised_worker import _port, _processes_of

pytestmark = pytest.mark.slow


def _instances(n: int) -> tuple[str, list[bytes]]:
    """``n`` instances of one new study (CT_small under new UIDs)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for _ in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return study, out


def _stow(base: str, auth: dict[str, str], parts: list[bytes]) -> int:
    body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--b--\r\n"
    return httpx.post(f"{base}/dicomweb/studies", content=body, timeout=60, headers={
        **auth, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    ).status_code


def test_a_second_http_process_serves_stores_restarts_and_dies_with_the_server(tmp_path):
    data = (tmp_path / "var").resolve()
    http = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    env.update(MEDGATE_DATA_DIR=str(data), MEDGATE_HTTP_PORT=str(http),
               MEDGATE_DICOM_PORT=str(_port()), MEDGATE_DICOM_HOST="127.0.0.1",
               MEDGATE_HTTP_WORKERS="2", MEDGATE_EMBEDDED_WORKER="false")
    log_path = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                              stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{http}"

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def second() -> int | None:
        found = re.findall(r"HTTP process 2 started \(pid (\d+)\)", output())
        return int(found[-1]) if found else None

    def up() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200 and bool(second())
        except httpx.HTTPError:
            return False

    try:
        try:
            wait_for(up, timeout=120, interval=0.5, what="the server")
        except AssertionError:
            raise AssertionError(output()) from None
        key = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role",
                              "pacs", "--name", "t"], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        auth = {"Authorization": f"Bearer {key}"}

        # Both processes store at once: every instance is indexed once.
        study, parts = _instances(12)
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: _stow(base, auth, parts[i:i + 3]), range(0, 12, 3)))
        assert codes == [200] * 4
        found = httpx.get(f"{base}/dicomweb/studies/{study}/instances", headers=auth,
                          timeout=10).json()
        assert len(found) == 12

        # With the first process stopped, the second answers on the same socket, and stores.
        os.kill(server.pid, signal.SIGSTOP)
        try:
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            study2, more = _instances(2)
            assert _stow(base, auth, more) == 200
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert len(httpx.get(f"{base}/dicomweb/studies/{study2}/instances", headers=auth,
                             timeout=10).json()) == 2

        # A killed HTTP process is started again.
        first = second()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: second() not in (None, first), timeout=30, interval=0.3,
                 what="the restarted HTTP process")
    finally:
        family = _processes_of(data)
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert len(family) >= 2  # the server and its second HTTP process
    wait_for(lambda: not _processes_of(data), timeout=40, interval=0.5,
             what="no MedGate process left after SIGKILL")
