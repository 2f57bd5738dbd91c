"""Query benchmark: QIDO-RS study, series and instance searches on SQLite and PostgreSQL.

Each database is fresh: a SQLite file in a temporary folder, and a PostgreSQL database created
for the run (``--pg``, an admin URL; default ``postgresql://postgres@127.0.0.1:5432/test``) and
dropped at the end. Both are migrated, then filled through the models directly (index rows, no
store path): ``--studies`` studies (default 100) of ``--per-study`` instances (default 100) in
``--series`` series (default 4), two studies per patient, a study every third day of 2023, the
series CT, MR, CR and US in turn. Each instance gets a small header file (no pixel data) in the
store, so the searches that read headers (``includefield`` of an attribute the index does not
hold) read real files.

Every search runs ``--repeat`` times (default 50, after two warm-up runs), two ways:

* ``function``: ``app.dicom.wado.parse_search`` and ``run_search`` in a session of their own, as
  the QIDO-RS route calls them (C-FIND matches with the same ``app.dicom.query.search``);
* ``http``: ``GET /dicomweb/...`` through the FastAPI app (Starlette's TestClient, in process)
  with a real clinician API key: authentication, the audit event and the JSON response included.

It prints p50 and p95 in milliseconds, the number of results and the SQL statements one search
ran (SQLAlchemy's ``before_cursor_execute`` event on the engine), per database, and a markdown
table of the same at the end.

    .venv/bin/python bench/query.py [--studies 100] [--per-study 100] [--series 4]
                                    [--repeat 50] [--pg URL | --no-pg] [--no-http]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from sqlalchemy import insert  # noqa: E402

PG_ADMIN = os.environ.get("MEDGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MODALITIES = ("CT", "MR", "CR", "US")
ROOT_UID = "1.2.826.0.1.3680043.10.996"


@dataclass(frozen=True)
class Case:
    name: str
    level: str
    params: list[tuple[str, str]]
    study: str | None = None
    series: str | None = None

    def path(self) -> str:
        path = f"/studies/{self.study}" if self.study else ""
        if self.series:
            path += f"/series/{self.series}"
        return path + {"STUDY": "/studies", "SERIES": "/series",
                       "INSTANCE": "/instances"}[self.level]


def _study_uid(s: int) -> str:
    return f"{ROOT_UID}.1.{s}"


def _series_uid(s: int, k: int) -> str:
    return f"{ROOT_UID}.2.{s}.{k}"


def cases(studies: int) -> list[Case]:
    mid = studies // 2
    return [
        Case("studies: all", "STUDY", []),
        Case("studies: PatientID", "STUDY", [("PatientID", f"BP{mid // 2:04d}")]),
        Case("studies: StudyDate range (1 month)", "STUDY", [("StudyDate", "20230301-20230331")]),
        Case("studies: ModalitiesInStudy=MR, limit 10", "STUDY",
             [("ModalitiesInStudy", "MR"), ("limit", "10")]),
        Case("studies: all, includefield header", "STUDY",
             [("includefield", "SeriesDate,Rows")]),
        Case("series: all", "SERIES", []),
        Case("series: Modality=CT", "SERIES", [("Modality", "CT")]),
        Case("series: of a study", "SERIES", [], study=_study_uid(mid)),
        Case("instances: of a series", "INSTANCE", [], study=_study_uid(mid),
             series=_series_uid(mid, 0)),
        Case("instances: of a study", "INSTANCE", [], study=_study_uid(mid)),
        Case("instances: all, limit 100", "INSTANCE", [("limit", "100")]),
        Case("instances: all, limit 100 offset 5000", "INSTANCE",
             [("limit", "100"), ("offset", "5000")]),
        Case("instances: SOPClassUID, limit 1000", "INSTANCE", [("SOPClassUID", CT_IMAGE)]),
    ]


# -- databases ---------------------------------------------------------------------------------
@contextmanager
def sqlite_database(folder: Path) -> Iterator[str]:
    yield f"sqlite:///{folder / 'bench.db'}"


@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"medgate_bench_q_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        from app.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def configure(data_dir: Path, db_url: str) -> None:
    from app.config import get_settings, reset_settings
    from app.db import migrate
    from app.db.session import dispose_engines

    os.environ["MEDGATE_DATA_DIR"] = str(data_dir)
    os.environ["MEDGATE_DATABASE_URL"] = db_url
    os.environ["MEDGATE_PUBLIC_URL"] = "http://testserver"
    reset_settings()
    dispose_engines()
    get_settings().ensure_dirs()
    migrate.upgrade()


def _header(study: int, series: int, modality: str) -> bytes:
    """A small Part 10 header (no pixel data) for the instances of one series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = f"{ROOT_UID}.3.{study}.{series}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _study_uid(study), _series_uid(study, series)
    ds.Modality, ds.SeriesDate, ds.Rows, ds.Columns = modality, "20230101", 512, 512
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def populate(studies: int, per_study: int, n_series: int) -> None:
    from app.config import get_settings
    from app.db.models import Instance, Patient, Series, Study
    from app.db.session import session_scope

    store = get_settings().store_dir
    per_series = max(1, per_study // n_series)
    patients, study_rows, series_rows, instance_rows = [], [], [], []
    for p in range((studies + 1) // 2):
        patients.append({"id": p + 1, "patient_id": f"BP{p:04d}", "issuer": "",
                         "patient_name": f"Bench^Patient{p}", "birth_date": "19700101",
                         "sex": "O"})
    for s in range(studies):
        day = date(2023, 1, 1) + timedelta(days=3 * s)
        study_rows.append({"id": s + 1, "study_uid": _study_uid(s), "patient_fk": s // 2 + 1,
                           "study_date": day.strftime("%Y%m%d"), "study_time": "101010",
                           "accession_number": f"ACC{s:05d}", "study_id": str(s),
                           "study_description": "Bench study", "referring_physician": "",
                           "state": "complete"})
        for k in range(n_series):
            series_id = s * n_series + k + 1
            modality = MODALITIES[k % len(MODALITIES)]
            series_rows.append({"id": series_id, "series_uid": _series_uid(s, k),
                                "study_fk": s + 1, "modality": modality, "series_number": k + 1,
                                "series_description": f"Series {k + 1}", "body_part": "CHEST",
                                "derived": False})
            folder = store / "bench" / str(s) / str(k)
            folder.mkdir(parents=True, exist_ok=True)
            header = _header(s, k, modality)
            for n in range(per_series):
                rel = f"bench/{s}/{k}/{n}.dcm"
                (store / rel).write_bytes(header)
                instance_rows.append({
                    "id": len(instance_rows) + 1, "sop_instance_uid": f"{ROOT_UID}.4.{s}.{k}.{n}",
                    "series_fk": series_id, "sop_class_uid": CT_IMAGE, "instance_number": n + 1,
                    "transfer_syntax_uid": ExplicitVRLittleEndian, "path": rel,
                    "size": len(header), "sha256": "0" * 64})
    with session_scope() as session:
        for model, rows in ((Patient, patients), (Study, study_rows), (Series, series_rows),
                            (Instance, instance_rows)):
            for i in range(0, len(rows), 2000):
                session.execute(insert(model), rows[i:i + 2000])
    _analyze()


def _analyze() -> None:
    """Fresh planner statistics, as autovacuum would have after a bulk load."""
    from sqlalchemy import text

    from app.db.session import get_engine

    engine = get_engine()
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("ANALYZE"))


# -- timing ------------------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    way: str
    case: str
    p50: float
    p95: float
    results: int
    statements: int


def measure(run: Callable[[], int], repeat: int) -> tuple[float, float, int, int]:
    from app.db.session import counted_statements

    for _ in range(2):
        run()
    with counted_statements() as seen:
        results = run()
    statements = len(seen)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]
    return statistics.median(times), p95, results, statements


def function_runner(case: Case) -> Callable[[], int]:
    from app.db.session import session_scope
    from app.dicom import wado

    def run() -> int:
        with session_scope() as session:
            req = wado.parse_search(case.level, case.params, case.study, case.series)
            results, _ = wado.run_search(session, req, "http://testserver/dicomweb")
        return len(results)
    return run


def http_runner(client, headers: dict[str, str], case: Case) -> Callable[[], int]:  # noqa: ANN001
    def run() -> int:
        r = client.get(f"/dicomweb{case.path()}", params=case.params, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"{case.name}: {r.status_code} {r.text[:300]}")
        return len(r.json())
    return run


def bench_backend(backend: str, args: argparse.Namespace) -> list[Result]:
    out: list[Result] = []
    t0 = time.perf_counter()
    populate(args.studies, args.per_study, args.series)
    instances = args.studies * args.series * max(1, args.per_study // args.series)
    print(f"[{backend}] {args.studies} studies, {instances} instances loaded in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    ways: list[tuple[str, Callable[[Case], Callable[[], int]]]] = [("function", function_runner)]
    client = None
    if args.http:
        from fastapi.testclient import TestClient

        from app.db.session import session_scope
        from app.main import create_app
        from app.security.keys import create_key

        with session_scope() as session:
            _, key = create_key(session, "clinician", "bench-query", person_name="Dr Bench")
        client = TestClient(create_app())
        client.__enter__()
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/dicom+json"}
        ways.append(("http", lambda case: http_runner(client, headers, case)))
    try:
        for case in cases(args.studies):
            for way, runner in ways:
                p50, p95, n, statements = measure(runner(case), args.repeat)
                res = Result(backend, way, case.name, p50, p95, n, statements)
                out.append(res)
                print(f"[{backend}] {way:8} {case.name:40} p50 {p50:8.2f} ms  p95 {p95:8.2f} ms"
                      f"  {n:5} results  {statements:3} statements", flush=True)
    finally:
        if client is not None:
            client.__exit__(None, None, None)
    return out


def table(results: list[Result], backends: list[str], ways: list[str]) -> str:
    head = "| search | results | " + " | ".join(
        f"{b} {w} p50 / p95 ms (stmts)" for b in backends for w in ways) + " |"
    lines = [head, "|" + "---|" * (2 + len(backends) * len(ways))]
    names = list(dict.fromkeys(r.case for r in results))
    index = {(r.backend, r.way, r.case): r for r in results}
    for name in names:
        cells = []
        n = next(r.results for r in results if r.case == name)
        for b in backends:
            for w in ways:
                r = index.get((b, w, name))
                cells.append(f"{r.p50:.1f} / {r.p95:.1f} ({r.statements})" if r else "-")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--per-study", type=int, default=100)
    ap.add_argument("--series", type=int, default=4, help="series per study")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL (a database to "
                    "connect to while creating and dropping the benchmark's own)")
    ap.add_argument("--no-pg", dest="use_pg", action="store_false")
    ap.add_argument("--no-http", dest="http", action="store_false")
    args = ap.parse_args()
    print("$ " + shlex.join([".venv/bin/python", "bench/query.py", *sys.argv[1:]]))
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.studies} studies x {args.per_study} instances "
          f"({args.series} series each), {args.repeat} runs per search", flush=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="medgate-prom-"))
    os.environ.setdefault("MEDGATE_EMBEDDER", "hashing")
    results: list[Result] = []
    backends = ["sqlite"] + (["postgresql"] if args.use_pg else [])
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix=f"medgate-bench-q-{backend}-") as tmp:
            folder = Path(tmp)
            db = sqlite_database(folder) if backend == "sqlite" else pg_database(args.pg)
            with db as url:
                configure(folder / "var", url)
                try:
                    results += bench_backend(backend, args)
                finally:
                    from app.db.session import dispose_engines

                    dispose_engines()
    ways = ["function"] + (["http"] if args.http else [])
    print()
    print("$ " + shlex.join([".venv/bin/python", "bench/query.py", *sys.argv[1:]]))
    print()
    print(table(results, backends, ways))


if __name__ == "__main__":
    main()
