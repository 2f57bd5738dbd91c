"""`medgate serve` supervises its embedded worker (issue 10, item 2): /readyz reports the
worker from its heartbeat, a worker killed with SIGKILL is restarted and the next study is
drafted without restarting the server, and a server killed with SIGKILL leaves no MedGate process
behind. A real server process on loopback ports, the embedded default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom.data
import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow
CT = Path(pydicom.data.get_testdata_file("CT_small.dcm"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(data_dir: Path) -> list[int]:
    """Live processes started with this test's MEDGATE_DATA_DIR (the server and its workers)."""
    marker = f"MEDGATE_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") and \
                    b"zombie" not in (entry / "status").read_bytes().lower():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _ready(base: str) -> dict:
    r = httpx.get(f"{base}/readyz", timeout=5)
    return {**r.json(), "status": r.status_code}


def test_killed_worker_is_restarted_and_a_killed_server_leaves_nothing(tmp_path):
    data = (tmp_path / "var").resolve()
    http, dicom = _port(), _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    env.update(MEDGATE_DATA_DIR=str(data), MEDGATE_HTTP_PORT=str(http),
               MEDGATE_DICOM_PORT=str(dicom), MEDGATE_DICOM_HOST="127.0.0.1",
               MEDGATE_STABLE_SECONDS="1", MEDGATE_SWEEP_INTERVAL_SECONDS="0.5")
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{http}"

    def output() -> str:
        return (tmp_path / "serve.log").read_text(errors="replace")[-4000:]

    try:
        def up():
            try:
                return _ready(base)["status"] == 200
            except (httpx.HTTPError, ValueError):
                return False

        try:
            wait_for(up, timeout=120, interval=0.5, what="the server and its worker")
        except AssertionError:
            raise AssertionError(output()) from None
        assert _ready(base)["checks"]["worker"] == {"ok": True}
        key = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role",
                              "admin", "--name", "t"], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        auth = {"Authorization": f"Bearer {key}"}

        beat = data / "run" / "worker.heartbeat"
        worker_pid = int(beat.read_text().split()[0])
        os.kill(worker_pid, signal.SIGKILL)
        down = wait_for(lambda: (r := _ready(base))["status"] == 503 and r, timeout=10,
                        interval=0.2, what="/readyz to notice the dead worker")
        assert down["failed"] == ["worker"]
        wait_for(up, timeout=90, interval=0.5, what="the restarted worker")
        assert int(beat.read_text().split()[0]) != worker_pid
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert "medgate_worker_restarts_total 1.0" in metrics

        # the next study is drafted by the restarted worker, the server untouched
        body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + CT.read_bytes()
                + b"\r\n--b--\r\n")
        r = httpx.post(f"{base}/dicomweb/studies", content=body, timeout=30, headers={
            **auth, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
        assert r.status_code == 200, r.text
        uid = pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID

        def drafted():
            reports = httpx.get(f"{base}/api/v1/studies/{uid}", headers=auth,
                                timeout=5).json().get("reports", [])
            return reports and reports[0]["state"] == "draft"

        try:
            wait_for(drafted, timeout=120, interval=0.5, what="the draft")
        except AssertionError:
            raise AssertionError(output()) from None
        assert server.poll() is None

        # no patient data in the server's log: QIDO values are redacted from the access log
        found = httpx.get(f"{base}/dicomweb/studies", timeout=10, headers=auth,
                          params={"PatientName": "CompressedSamples*", "PatientID": "1CT1"})
        assert found.status_code == 200 and len(found.json()) == 1
        time.sleep(0.5)
        text = (tmp_path / "serve.log").read_text(errors="replace")
        assert "GET /dicomweb/studies?PatientName=…&PatientID=… HTTP/1.1" in text
        for phi in ("CompressedSamples", "1CT1"):
            assert phi not in text, [ln for ln in text.splitlines() if phi in ln][:3]
    finally:
        family = _processes_of(data)
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert len(family) >= 2  # the server and at least the worker's main process were running
    try:
        wait_for(lambda: not _processes_of(data), timeout=40, interval=0.5,
                 what="every MedGate process to end after the server was killed")
    finally:
        for pid in _processes_of(data):
            os.kill(pid, signal.SIGKILL)
