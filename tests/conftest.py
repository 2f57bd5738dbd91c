"""Shared fixtures: real SQLite and PostgreSQL databases, real Redis, real worker processes.

PostgreSQL and Redis tests run when the services answer. Under CI=true an unreachable service
fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Metrics from every process of a test run (API, workers) go to one folder of the run's own;
# it must be set before anything imports prometheus_client.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="medgate-prom-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get("MEDGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MEDGATE_TEST_REDIS", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip outside CI; fail under CI, where every service must be there."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def shared_file(rel: str) -> Path:
    """A file of ../shared/data: skipped outside CI when absent, a failure under CI."""
    path = SHARED_DATA / rel
    if not path.exists():
        unavailable(f"shared test data not found: {path} (an outside clone has none)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        unavailable(f"shared test data not found at {SHARED_DATA} (an outside clone has none)")
    return SHARED_DATA


def _pg_admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"medgate_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    from app.db.session import dispose_engines

    dispose_engines()
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after."""
    import redis

    url = f"{REDIS_URL}/{7 + (os.getpid() % 8)}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medgate.db'}"
    return request.getfixturevalue("pg_url")


def configure_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path, db_url: str | None = None,
                  broker_url: str | None = None, **extra: str) -> None:
    """Point MedGate at a test data folder, database and broker, and forget cached state."""
    from app.config import get_settings, reset_settings
    from app.db.session import dispose_engines
    from app.pipeline.celery_app import configure

    monkeypatch.setenv("MEDGATE_DATA_DIR", str(data_dir))
    for key, val in (("MEDGATE_DATABASE_URL", db_url), ("MEDGATE_BROKER_URL", broker_url)):
        if val:
            monkeypatch.setenv(key, val)
        else:
            monkeypatch.delenv(key, raising=False)
    # Workers search the knowledge base (the CT assistant): the hashing embedder builds its
    # index in milliseconds; tests/rag checks the shipped MiniLM model on its own.
    extra.setdefault("embedder", "hashing")
    for key, val in extra.items():
        monkeypatch.setenv(f"MEDGATE_{key.upper()}", val)
    reset_settings()
    dispose_engines()
    get_settings().ensure_dirs()
    configure(get_settings())


@pytest.fixture
def medgate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str):
    """A migrated MedGate on the parametrised database with the embedded broker."""
    from app.config import get_settings
    from app.db import migrate

    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade()
    yield get_settings()
    from app.db.session import dispose_engines

    dispose_engines()


@pytest.fixture
def client(medgate):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


def role_keys() -> dict[str, dict[str, str]]:
    """One key per role in the configured database, as 'Authorization' header dicts."""
    from app.db.session import session_scope
    from app.security.keys import create_key

    out = {}
    with session_scope() as session:
        for role in ("pacs", "clinician", "admin"):
            person = "Dr Test Clinician" if role == "clinician" else ""
            _, key = create_key(session, role, f"test-{role}", person_name=person)
            out[role] = {"Authorization": f"Bearer {key}"}
    return out


@pytest.fixture
def keys(medgate) -> dict[str, dict[str, str]]:
    return role_keys()


def dciodvfy(path: Path) -> list[str]:
    """dicom3tools' validator on one file: its lines (``Error - ...``, ``Warning - ...``)."""
    out = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True,
                         timeout=60)
    return (out.stdout + out.stderr).splitlines()


def cr_from_png(png: Path, out: Path, *, patient: str, date: str, name: str = "Test^CR",
                crop: tuple[int, int, int, int] | None = None,
                size: tuple[int, int] | None = None) -> Path:
    """A CR image object of a real radiograph (an NIH ChestX-ray14 PNG of shared/data) for one
    patient; ``crop`` (left, top, right, bottom) and ``size`` (columns, rows) reshape it."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    img = Image.open(png).convert("L")
    if crop is not None:
        img = img.crop(crop)
    if size is not None:
        img = img.resize(size, Image.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = patient, name, date, "0900"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.StudyDescription, ds.InstanceNumber, ds.SeriesNumber = "Chest PA", 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


class WorkerProcess:
    """A real `medgate worker` in its own process, with the test's environment."""

    def __init__(self, env: dict[str, str], queues: str = "ingest,cxr,ct,ecg,pathology,export"):
        self.env = env
        self.queues = queues
        self.proc: subprocess.Popen | None = None
        self.log = Path(env["MEDGATE_DATA_DIR"]) / f"worker-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "-Q", self.queues, "-l", "INFO"],
            env=self.env, cwd=ROOT, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    def kill(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def worker_factory():
    started: list[WorkerProcess] = []

    def make(**kw) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items()}
        w = WorkerProcess(env, **kw).start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def loopback_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port (for ``serve_in_thread``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve_in_thread(sock: socket.socket) -> Iterator[None]:
    """MedGate's app served by uvicorn on ``sock``, in a thread of this process, with its
    lifespan; stopped and the socket closed afterwards."""
    import uvicorn

    from app.main import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (make test installs it with apt-get)")
    return path
