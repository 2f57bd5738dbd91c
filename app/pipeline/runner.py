"""Runs one job in a worker: load the study, run the engines of its pipeline, compose the draft,
write the report version and mark the job done, in one transaction.

Errors are sorted into transient (database or file system hiccups: the task retries with
backoff) and permanent (bad input, a model that fails or breaks the contract: the job fails
with a reason the API shows).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import metrics
from app.config import get_settings
from app.db.models import Instance, Job, Patient, Series, Study, StudyEvent
from app.db.session import session_factory
from app.pipeline import jobs
from app.pipeline.composer import compose
from models.base import EngineResult, StudyInput, build

log = logging.getLogger("medgate.runner")

TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENOSPC, errno.EIO}


class TransientError(Exception):
    """Worth retrying: the same job may well succeed in a moment."""


class PermanentError(Exception):
    """Retrying will not help: bad input or a model error."""


def _classify(exc: BaseException) -> type[Exception]:
    if isinstance(exc, OperationalError):
        return TransientError
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return TransientError
    return PermanentError


def study_input(session: Session, study: Study, domain: str,
                instance_uids: list[str] | None = None, with_prior: bool = True
                ) -> StudyInput:
    from app.pipeline.analyze import read_header

    store = get_settings().store_dir
    stmt = (select(Instance).join(Series, Instance.series_fk == Series.id)
            .where(Series.study_fk == study.id)
            .order_by(Series.id, Instance.instance_number, Instance.id))
    instances = list(session.scalars(stmt))
    if instance_uids is not None:
        wanted = set(instance_uids)
        instances = [i for i in instances if i.sop_instance_uid in wanted]
    if not instances:
        raise PermanentError(f"study {study.study_uid} has no stored instances")
    paths = [store / i.path for i in instances]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PermanentError(f"stored files are missing: {missing[:3]}")
    metadata = []
    for p in paths:
        try:
            metadata.append(read_header(p))
        except ValueError as exc:
            raise PermanentError(f"{p.name}: {exc}") from exc
    prior = find_prior(session, study, domain) if with_prior else None
    return StudyInput(domain=domain, paths=paths, metadata=metadata, study_uid=study.study_uid,
                      prior=study_input(session, prior, domain, with_prior=False)
                      if prior is not None else None)


def find_prior(session: Session, study: Study, domain: str) -> Study | None:
    """The same patient's most recent earlier study of the same domain (by study date, then by
    arrival), or None. Patients without an ID are never matched to each other."""
    patient = session.get(Patient, study.patient_fk)
    if patient is None or not patient.patient_id:
        return None
    candidates = session.scalars(
        select(Study).where(Study.patient_fk == study.patient_fk, Study.id != study.id,
                            Study.domain == domain)).all()

    def key(s: Study) -> tuple[str, Any]:
        return (s.study_date or "", s.first_received_at)

    this = key(study)
    earlier = [s for s in candidates if key(s) < this]
    return max(earlier, key=key) if earlier else None


def resolve_spec(session: Session, family: str):  # noqa: ANN201 - ModelSpec
    """The active registered version of a family, else its built-in default."""
    from app.db.models import ModelVersion
    from app.pipeline.analyze import default_spec
    from models.base import ModelSpec

    row = session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                    ModelVersion.status == "active"))
    if row is None:
        return default_spec(family)
    weights = row.weights_path
    if weights and not Path(weights).is_absolute():
        weights = str(get_settings().models_dir / weights)
    return ModelSpec(family=row.family, version=row.version, variant=row.variant,
                     weights_path=weights, sha256=row.sha256, config=row.config or {})


_CORPUS: dict[str, dict[str, Any]] | None = None


def knowledge_lookup():  # noqa: ANN201 - the composer's knowledge callable
    """Entries by id, read from the corpus files once per process. Citing an entry needs its
    title, not the search index, so a worker never waits for embeddings to cite."""
    global _CORPUS
    if _CORPUS is None:
        from app.rag.corpus import default_corpus_root, load_corpus

        root = default_corpus_root()
        _CORPUS = ({e.id: e.to_dict() for e in load_corpus(root, strict=False)}
                   if root.is_dir() else {})
    corpus = _CORPUS
    return corpus.get


def load_plugins() -> None:
    import importlib

    for module in get_settings().engine_plugins:
        importlib.import_module(module)


def run_engines(session: Session, job: Job, study: StudyInput) -> tuple[list[EngineResult],
                                                                        dict[str, float]]:
    results, timings = [], {}
    load_plugins()
    for family in job.engines:
        spec = resolve_spec(session, family)
        started = time.perf_counter()
        try:
            engine = build(spec)
            result = engine.run(study)
        except Exception as exc:
            kind = _classify(exc)
            raise kind(f"engine {family}@{spec.version} failed: {type(exc).__name__}: {exc}"
                       ) from exc
        elapsed = time.perf_counter() - started
        if not isinstance(result, EngineResult):
            raise PermanentError(f"engine {family} returned {type(result).__name__}")
        timings[f"{family}@{spec.version}"] = round(elapsed, 4)
        metrics.ENGINE_RUN.labels(domain=job.domain, engine=family).observe(elapsed)
        results.append(result)
    return results, timings


class _Heart(threading.Thread):
    def __init__(self, job_id: int, token: str) -> None:
        super().__init__(daemon=True)
        self.job_id, self.token = job_id, token
        self.stop_event = threading.Event()

    def run(self) -> None:
        interval = get_settings().job_heartbeat_seconds
        factory = session_factory()
        while not self.stop_event.wait(interval):
            try:
                with factory() as session:
                    jobs.heartbeat(session, self.job_id, self.token)
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("heartbeat for job %s failed", self.job_id)


def execute(job_id: int) -> str:
    """Run one job. Returns 'done', 'skipped' or 'failed'; raises TransientError to retry."""
    from app.reports.service import open_report, write_draft

    factory = session_factory()
    with factory() as session:
        token = jobs.claim(session, job_id)
        if token is None:
            return "skipped"
        job = session.get(Job, job_id)
        if job.queued_at and job.started_at:
            metrics.QUEUE_WAIT.labels(domain=job.domain).observe(
                max(0.0, (job.started_at - job.queued_at).total_seconds()))
    heart = _Heart(job_id, token)
    heart.start()
    started = time.perf_counter()
    try:
        with factory() as session:
            job = session.get(Job, job_id)
            study = session.get(Study, job.study_fk)
            data = study_input(session, study, job.domain, job.instance_uids)
            results, timings = run_engines(session, job, data)
            draft = compose(results, knowledge_lookup())
            elapsed = time.perf_counter() - started
            timings["total"] = round(elapsed, 4)
            if not jobs.finish(session, job_id, token, timings):
                session.rollback()
                return "skipped"
            report = open_report(session, study, job.domain)
            version = write_draft(session, report, draft.to_dict(),
                                  [r.to_dict() for r in results],
                                  author=",".join(sorted(timings.keys() - {"total"})),
                                  job_id=job_id)
            session.add(StudyEvent(study_fk=study.id, kind="finished",
                                   detail={"job": job_id, "seconds": round(elapsed, 3)}))
            session.add(StudyEvent(study_fk=study.id, kind="drafted",
                                   detail={"job": job_id, "report": report.id,
                                           "version": version.number}))
            session.commit()
            metrics.JOB_RUN.labels(domain=job.domain).observe(elapsed)
            return "done"
    except TransientError as exc:
        with factory() as session:
            jobs.release(session, job_id, token, str(exc))
        raise
    except OperationalError as exc:
        with factory() as session:
            jobs.release(session, job_id, token, str(exc))
        raise TransientError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - anything else is permanent for this job
        reason = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
        log.warning("job %s failed: %s", job_id, reason)
        with factory() as session:
            jobs.fail(session, job_id, token, reason)
        return "failed"
    finally:
        heart.stop_event.set()
