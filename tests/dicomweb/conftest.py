"""DICOMweb fixtures: a real uvicorn server on a loopback port, instances built with pydicom,
and checks that a refused upload left nothing behind."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import loopback_socket, serve_in_thread


@pytest.fixture(scope="session")
def _shared_pg_database() -> Iterator[str]:
    """One migrated PostgreSQL database for this folder's tests, emptied before each test
    (creating and migrating a database per test costs seconds on a busy machine)."""
    import uuid

    from tests.conftest import PG_ADMIN_URL, _pg_admin

    name = f"medgate_dw_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    with pytest.MonkeyPatch.context() as mp:
        from app.config import reset_settings
        from app.db import migrate
        from app.db.session import dispose_engines

        mp.setenv("MEDGATE_DATABASE_URL", url)
        reset_settings()
        migrate.upgrade()
        dispose_engines()
    reset_settings()
    yield url
    from app.db.session import dispose_engines

    dispose_engines()
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            tables = [r[0] for r in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"))]
            if tables:
                conn.execute(text("TRUNCATE TABLE " + ", ".join(f'"{t}"' for t in tables)
                                  + " RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Response URLs come from MEDGATE_PUBLIC_URL; these tests expect TestClient's address."""
    monkeypatch.setenv("MEDGATE_PUBLIC_URL", "http://testserver")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """As tests/conftest.py's db_url, but PostgreSQL is one shared database, emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medgate.db'}"
    url = request.getfixturevalue("_shared_pg_database")
    _empty_database(url)
    return url


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_instance(*, study: str | None = None, series: str | None = None,
                  sop: str | None = None, sop_class: str = SECONDARY_CAPTURE,
                  pixels: int = 64, **attrs: object) -> bytes:
    """A small valid Part 10 file; ``attrs`` set or (with None) remove attributes."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.AccessionNumber = "ACC1"
    ds.StudyDescription = "Test study"
    ds.Columns = min(pixels, 256)
    ds.Rows = -(-pixels // ds.Columns)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (bytes(range(256)) * ds.Rows)[:ds.Rows * ds.Columns]
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", sop_class)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "SOPInstanceUID" not in ds:
        return _part10_without_instance_uid(ds, meta)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _part10_without_instance_uid(ds: Dataset, meta: FileMetaDataset) -> bytes:
    """pydicom refuses to write a standard file meta without MediaStorageSOPInstanceUID; a
    sender with a broken dataset does not care."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=False)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def multipart(parts: list[bytes], boundary: str = "test-boundary",
              part_type: str = "application/dicom") -> bytes:
    out = b""
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow_headers(auth: dict[str, str], boundary: str = "test-boundary") -> dict[str, str]:
    return {**auth,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"}


def stored_files(store_dir: Path) -> list[Path]:
    """Every file under the store, the (empty) tmp folder's contents included."""
    return [p for p in store_dir.rglob("*") if p.is_file()]


def row_counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from app.db.models import Instance, Patient, Series, Study
    from app.db.session import session_scope

    with session_scope() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m))
                for m in (Patient, Study, Series, Instance)}


def assert_nothing_stored(store_dir: Path) -> None:
    assert stored_files(store_dir) == []
    assert row_counts() == {"patient": 0, "study": 0, "series": 0, "instance": 0}


@dataclass
class Live:
    url: str
    keys: dict[str, dict[str, str]]
    store_dir: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicomweb"

    def token(self, role: str) -> str:
        return self.keys[role]["Authorization"]


@pytest.fixture
def live(medgate, keys) -> Iterator[Live]:
    """MedGate served by uvicorn on a free loopback port, in a thread of this process."""
    sock = loopback_socket()
    with serve_in_thread(sock):
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", keys, medgate.store_dir)
