"""Fixtures for the DIMSE SCP tests: a real SCP on a free loopback port, in this process.

``scp`` runs on the parametrised database of the ``medgate`` fixture (SQLite and PostgreSQL);
``sqlite_scp`` on SQLite only, for tests whose behaviour does not depend on the database.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from sqlalchemy import func, select

from app.config import Settings
from app.db.models import Instance, Series, Study
from app.db.session import session_factory
from app.dicom.scp import DicomSCP
from tests.conftest import configure_env

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningSCP:
    settings: Settings
    scp: DicomSCP

    @property
    def port(self) -> int:
        return self.settings.dicom_port

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def counts(self) -> tuple[int, int, int]:
        """(studies, series, instances) in the index."""
        with session_factory(self.settings.db_url)() as s:
            return tuple(s.scalar(select(func.count()).select_from(m))  # type: ignore[return-value]
                         for m in (Study, Series, Instance))

    def instance(self, sop_instance_uid: str) -> Instance | None:
        with session_factory(self.settings.db_url)() as s:
            return s.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))

    def stored_path(self, sop_instance_uid: str) -> Path:
        row = self.instance(sop_instance_uid)
        assert row is not None, f"{sop_instance_uid} was not indexed"
        return self.settings.store_dir / row.path

    def stored_files(self) -> list[Path]:
        return [p for p in self.settings.store_dir.rglob("*.dcm")]


def split_part10(path: Path) -> tuple[pydicom.Dataset, bytes]:
    """(file meta, the encoded data set bytes after it) of a Part 10 file."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        return meta, fp.read()


# The calling AE titles the tests use (pynetdicom's and dcmtk's defaults among them); the
# shared fixtures register them as peers from 127.0.0.1 with store and query rights.
TEST_PEERS = ("PYSCU", "STORESCU", "FINDSCU", "ECHOSCU", "CORPUS")


def register_peers(settings: Settings, *ae_titles: str, host: str = "127.0.0.1",
                   can_store: bool = True, can_query: bool = True) -> None:
    from app.db.session import session_scope
    from app.dicom import peers

    with session_scope(settings.db_url) as session:
        for ae in ae_titles:
            peers.create(session, ae, "test", host=host, can_store=can_store,
                         can_query=can_query)


def _start(settings: Settings, peers: tuple[str, ...] = TEST_PEERS) -> Iterator[RunningSCP]:
    settings = settings.model_copy(update={"dicom_host": "127.0.0.1", "dicom_port": free_port()})
    register_peers(settings, *peers)
    scp = DicomSCP(settings)
    scp.start()
    try:
        yield RunningSCP(settings, scp)
    finally:
        scp.stop(grace=2)


@pytest.fixture
def scp(medgate: Settings) -> Iterator[RunningSCP]:
    yield from _start(medgate)


@pytest.fixture
def sqlite_medgate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    from app.config import get_settings
    from app.db import migrate
    from app.db.session import dispose_engines

    configure_env(monkeypatch, tmp_path / "var", None)
    migrate.upgrade()
    yield get_settings()
    dispose_engines()


@pytest.fixture
def sqlite_scp(sqlite_medgate: Settings) -> Iterator[RunningSCP]:
    yield from _start(sqlite_medgate)
