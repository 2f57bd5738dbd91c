"""Nothing half-stored after a crash (issue 10, item 1): a real `medgate serve` is killed with
SIGKILL (its whole process group, as a power cut would) at three points of a 100-instance
STOW-RS request - while the parts are being spooled, after the first files reached their final
paths, and after every rename but before the commit - and restarted. After the restart every
acknowledged instance is there byte for byte, no file lacks a row, no row lacks a file, and no
temporary file is left. The crash points are MEDGATE_CRASH_AT (app/faults.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.badinput.corpus import image, part10
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow
BIG = 100
TYPE = 'multipart/related; type="application/dicom"; boundary=crash'


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(files: list[bytes]) -> bytes:
    return b"".join(b"--crash\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                    for f in files) + b"--crash--\r\n"


def _instances(n: int, pixels_kib: int = 64) -> list[bytes]:
    """n instances of one study, each in a series of its own (one folder each), ~64 KiB."""
    study = image().StudyInstanceUID
    side = int((pixels_kib * 1024 // 2) ** 0.5)
    out = []
    for _ in range(n):
        ds = image(StudyInstanceUID=study, Rows=side, Columns=side,
                   PixelData=os.urandom(side * side * 2))
        out.append(part10(ds))
    return out


class Server:
    def __init__(self, tmp: Path) -> None:
        self.data = (tmp / "var").resolve()
        self.port = _port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
        self.env.update(MEDGATE_DATA_DIR=str(self.data), MEDGATE_HTTP_PORT=str(self.port),
                        MEDGATE_EMBEDDED_WORKER="false", MEDGATE_START_SCP="false",
                        MEDGATE_RECONCILE_MIN_AGE_SECONDS="0")
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, crash_at: str | None = None) -> None:
        env = dict(self.env)
        if crash_at:
            env["MEDGATE_CRASH_AT"] = crash_at
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT,
                                     env=env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            try:
                return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(up, timeout=90, interval=0.3, what="medgate serve")
        except AssertionError:
            raise AssertionError(self.log.read_text(errors="replace")[-3000:]) from None

    def key(self) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--role",
                              "pacs", "--name", "crash-test"], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}

    def post(self, auth: dict[str, str], files: list[bytes]) -> httpx.Response:
        return httpx.post(f"{self.base}/dicomweb/studies", content=_body(files), timeout=120,
                          headers={**auth, "Content-Type": TYPE,
                                   "Accept": "application/dicom+json"})

    def wait_dead(self) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL, self.log.read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    # -- what is on disk and in the database
    @property
    def store(self) -> Path:
        return self.data / "store"

    def files(self) -> dict[str, str]:
        return {p.relative_to(self.store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in self.store.rglob("*.dcm") if "tmp" not in p.relative_to(
                    self.store).parts}

    def rows(self) -> dict[str, str]:
        with sqlite3.connect(self.data / "medgate.db") as db:
            return dict(db.execute("SELECT path, sha256 FROM instance"))

    def temporary(self) -> list[Path]:
        return [p for p in (self.store / "tmp").iterdir()] if (self.store / "tmp").exists() \
            else []


@pytest.mark.parametrize("crash_at", ["stow.spooled:50", "store.renamed:30",
                                      f"store.before_commit:{BIG}"])
def test_a_crash_during_a_large_store_leaves_the_store_and_the_index_in_agreement(
        tmp_path, crash_at):
    server = Server(tmp_path)
    try:
        server.start(crash_at)
        auth = server.key()
        acknowledged = _instances(5)
        r = server.post(auth, acknowledged)  # below every crash point's count
        assert r.status_code == 200, r.text
        big = _instances(BIG)
        with pytest.raises(httpx.HTTPError):  # killed: the request is never answered
            server.post(auth, big)
        server.wait_dead()
        # what the crash left: spool files, and files in final paths without a row
        renamed = len(set(server.files()) - set(server.rows()))
        left = {"stow.spooled:50": (50, 0), "store.renamed:30": (BIG - 30, 30),
                f"store.before_commit:{BIG}": (0, BIG)}[crash_at]
        assert (len(server.temporary()), renamed) == left

        server.start()  # reconciliation runs before the server answers
        files, rows = server.files(), server.rows()
        assert files == rows  # no file without a row, no row without a file, same bytes
        assert server.temporary() == []
        stored = {hashlib.sha256(f).hexdigest() for f in acknowledged}
        assert stored <= set(rows.values())
        for data in acknowledged:  # retrieved byte for byte
            ds_uids = [u for u in rows if hashlib.sha256(data).hexdigest() == rows[u]]
            assert len(ds_uids) == 1
            assert (server.store / ds_uids[0]).read_bytes() == data
        # the sender, never answered, sends again: everything is stored once
        r = server.post(auth, big)
        assert r.status_code == 200, r.text
        assert len(server.rows()) == len(acknowledged) + BIG == len(server.files())
    finally:
        server.stop()
