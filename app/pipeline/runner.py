"""Runs one job in a worker: read the study and the model versions, run the engines of its
pipeline, compose the draft, write the report version and mark the job done.

The database session is closed while the models run: everything a job needs is read first
(instances, prior, the active version of each family with its manifest), the engines run with
no transaction open, and the draft is written in one short transaction at the end.

Engines live for the worker's lifetime (``models.runtime.cache``): built and loaded once per
family, version and weights, timed by a metric and a log line, reused by every later job; the
next job after an activation builds the new version.

Errors are sorted into transient (database or file system hiccups: the task retries with
backoff) and permanent (bad input, a model that fails or breaks the contract). A permanent error
of a required engine fails the job with a reason the API shows; one of an optional engine adds a
warning to the draft and the job goes on.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import metrics
from app.config import get_settings
from app.db.models import Ask, Delivery, Instance, Job, Patient, Series, Study
from app.db.session import session_factory
from app.dicom.headers import read_header
from app.pipeline import asks, derived, jobs
from app.pipeline.families import load_plugins
from app.pipeline.routing import pipeline_steps
from app.rag.corpus import knowledge_lookup
from app.rag.search import knowledge_search
from app.registry.versions import Resolved, resolve
from app.reports.composer import compose
from app.timeline import add_event
from models.base import ContractError, EngineResult, InstanceRef, SeriesInput, StudyInput
from models.phrasing import labeller_for
from models.runtime.cache import EngineCache
from models.runtime.device import dtype_name, resolve_device, resolve_dtype

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


def _on_load(spec, seconds: float) -> None:  # noqa: ANN001 - a ModelSpec
    metrics.ENGINE_LOAD.labels(family=spec.family, version=spec.version,
                               device=spec.device).observe(seconds)
    log.info("engine %s@%s loaded in %.2f s on %s (%s)", spec.family, spec.version, seconds,
             spec.device, spec.dtype or "default dtype")


_CACHE: EngineCache | None = None


def engine_cache() -> EngineCache:
    """This process's engines (one cache per worker process)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = EngineCache(on_load=_on_load)
    return _CACHE


# ---------------------------------------------------------------------------- reading a job

def study_input(session: Session, study: Study, domain: str,
                instance_uids: list[str] | None = None, with_prior: bool = True,
                output_dir: Path | None = None) -> StudyInput:
    store = get_settings().store_dir
    rows = session.execute(
        select(Instance, Series).join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id, Series.derived.is_(False))
        .order_by(Series.id, Instance.instance_number, Instance.id)).all()
    if instance_uids is not None:
        wanted = set(instance_uids)
        rows = [(i, s) for i, s in rows if i.sop_instance_uid in wanted]
    if not rows:
        raise PermanentError(f"study {study.study_uid} has no stored instances")
    paths = [store / i.path for i, _ in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PermanentError(f"stored files are missing: {missing[:3]}")
    metadata = []
    for p in paths:
        try:
            metadata.append(read_header(p))
        except ValueError as exc:
            raise PermanentError(f"{p.name}: {exc}") from exc
    grouped: dict[str, tuple[str, list[InstanceRef]]] = {}
    for (inst, series), path in zip(rows, paths, strict=True):
        grouped.setdefault(series.series_uid, (series.modality, []))[1].append(
            InstanceRef(inst.sop_instance_uid, path, inst.instance_number))
    series_inputs = [SeriesInput(uid, modality, tuple(refs))
                     for uid, (modality, refs) in grouped.items()]
    prior = find_prior(session, study, domain) if with_prior else None
    return StudyInput(domain=domain, paths=paths, metadata=metadata, study_uid=study.study_uid,
                      series=series_inputs, output_dir=output_dir,
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


@dataclass
class _Plan:
    """Everything a job needs from the database, read before any model runs."""

    study_id: int
    domain: str
    steps: list[tuple[str, bool]]
    study: StudyInput
    models: dict[str, Resolved]
    ask_id: int | None = None


def _plan(session: Session, job_id: int) -> _Plan:
    job = session.get(Job, job_id)
    study = session.get(Study, job.study_fk)
    out = get_settings().results_dir / study.study_uid / f"job-{job_id}"
    ask = (session.scalar(select(Ask).where(Ask.job_fk == job_id)) if job.kind == "ask"
           else None)
    if job.kind == "ask" and ask is None:
        raise PermanentError(f"job {job_id} is an ask whose question was deleted")
    # an ask reads the one instance it points at, with no prior
    data = study_input(session, study, job.domain, job.instance_uids, with_prior=ask is None,
                       output_dir=out)
    if ask is not None:
        data.prompt = asks.prompt_of(ask, study.study_uid)
    data.knowledge = knowledge_search
    settings = get_settings()
    try:
        device = resolve_device(settings.device)
    except ValueError as exc:
        raise PermanentError(f"MEDGATE_DEVICE: {exc}") from exc
    load_plugins()
    steps = pipeline_steps(job.engines)
    models = {}
    for family, _ in steps:
        dtype = dtype_name(resolve_dtype(device, settings.dtype_by_family.get(family)))
        models[family] = resolve(session, family, device=device, dtype=dtype)
        if (ask is not None and models[family].spec.variant == "reference"
                and not settings.allow_reference_answers):
            # the trained version the ask was accepted for was deactivated since
            raise PermanentError(f"{family} has no trained, active version any more; the "
                                 "reference model does not answer clinicians")
    return _Plan(study.id, job.domain, steps, data, models, ask.id if ask else None)


# ---------------------------------------------------------------------------- running engines

def run_engines(plan: _Plan) -> tuple[list[EngineResult], dict[str, float], list[str]]:
    """Run the plan's engines in order: results, seconds per engine, and the warnings of
    optional engines that were skipped."""
    cache = engine_cache()
    results, timings, skipped = [], {}, []
    for family, required in plan.steps:
        resolved = plan.models[family]
        spec = resolved.spec
        started = time.perf_counter()
        plan.study.earlier = list(results)
        try:
            result = cache.get(spec, resolved.manifest).run(plan.study)
            if not isinstance(result, EngineResult):
                raise PermanentError(f"returned {type(result).__name__}, not an EngineResult")
        except Exception as exc:
            kind = _classify(exc)
            # the contract's own errors (a manifest, a strict load, bad input) say it all
            reason = (str(exc) if isinstance(exc, PermanentError | ContractError)
                      else f"{type(exc).__name__}: {exc}")
            if kind is TransientError:
                raise TransientError(f"engine {family}@{spec.version} failed: {reason}") from exc
            if required:
                raise PermanentError(f"engine {family}@{spec.version} failed: {reason}") from exc
            log.info("optional engine %s@%s skipped: %s", family, spec.version, reason)
            metrics.ENGINE_SKIPPED.labels(domain=plan.domain, engine=family).inc()
            skipped.append(f"optional engine {family}@{spec.version} was skipped: {reason}")
            continue
        elapsed = time.perf_counter() - started
        timings[f"{family}@{spec.version}"] = round(elapsed, 4)
        metrics.ENGINE_RUN.labels(domain=plan.domain, engine=family).observe(elapsed)
        results.append(result)
    return results, timings, skipped


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
    factory = session_factory()
    with factory() as session:
        token = jobs.claim(session, job_id)
        if token is None:
            return "skipped"
        job = session.get(Job, job_id)
        domain, kind = job.domain, job.kind
        if job.queued_at and job.started_at:
            metrics.QUEUE_WAIT.labels(domain=job.domain).observe(
                max(0.0, (job.started_at - job.queued_at).total_seconds()))
    heart = _Heart(job_id, token)
    heart.start()
    started = time.perf_counter()
    plan: _Plan | None = None
    try:
        if kind == "export":
            return _deliver(factory, job_id, token, started)
        with factory() as session:
            plan = _plan(session, job_id)
            session.rollback()  # no transaction stays open while the models run
        results, timings, skipped = run_engines(plan)
        # masks become DICOM SEG instances of the study, point sets bulk annotations: every
        # mask of an ask (which says whether its model is trained), and trained results' own
        kept = [r for r in results if plan.ask_id is not None or r.trained]
        segs = derived.store_masks(factory, plan.study, kept)
        derived.store_annotations(factory, plan.study, kept)
        draft = None if plan.ask_id is not None else compose(
            results, knowledge_lookup(), warnings=skipped, labeller=labeller_for(plan.domain))
        elapsed = time.perf_counter() - started
        timings["total"] = round(elapsed, 4)
        with factory() as session:
            if not jobs.finish(session, job_id, token, timings):
                session.rollback()
                return "skipped"
            if draft is None:
                _write_answer(session, plan, job_id, results[0], segs, timings, elapsed)
            else:
                _write_draft(session, plan, job_id, draft, results, timings, elapsed, skipped)
            session.commit()
        metrics.JOB_RUN.labels(domain=plan.domain).observe(elapsed)
        metrics.JOBS_FINISHED.labels(domain=plan.domain, outcome="done").inc()
        return "done"
    except TransientError as exc:
        _discard_outputs(plan)
        with factory() as session:
            jobs.release(session, job_id, token, str(exc))
        metrics.JOBS_FINISHED.labels(domain=domain, outcome="retried").inc()
        raise
    except OperationalError as exc:
        _discard_outputs(plan)
        with factory() as session:
            jobs.release(session, job_id, token, str(exc))
        metrics.JOBS_FINISHED.labels(domain=domain, outcome="retried").inc()
        raise TransientError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - anything else is permanent for this job
        _discard_outputs(plan)
        reason = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
        log.warning("job %s failed: %s", job_id, reason)
        with factory() as session:
            jobs.fail(session, job_id, token, reason)
        metrics.JOBS_FINISHED.labels(domain=domain, outcome="failed").inc()
        return "failed"
    finally:
        heart.stop_event.set()


def _deliver(factory, job_id: int, token: str, started: float) -> str:  # noqa: ANN001
    """Send a report version's SR to its destination; a refusal for good fails the job, a
    fault that may pass is retried (``app.export.delivery``)."""
    from app.export import build, delivery
    from app.export.sr import SRError

    with factory() as session:
        d, dest, report, version, _ = delivery.load(session, job_id)
        report_id, number, name, study_fk = report.id, version.number, dest.name, report.study_fk
        session.expunge(dest)
    try:
        path = build.stored_sr(factory, report_id, number)
        status = delivery.send(dest, path)
    except delivery.Transient as exc:
        metrics.DELIVERIES.labels(destination=name, outcome="retried").inc()
        raise TransientError(f"delivery to {name}: {exc}") from exc
    except (delivery.Permanent, SRError) as exc:
        metrics.DELIVERIES.labels(destination=name, outcome="failed").inc()
        raise PermanentError(f"delivery to {name}: {exc}") from exc
    import pydicom

    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    with factory() as session:
        if not jobs.finish(session, job_id, token,
                           {"total": round(time.perf_counter() - started, 4)}):
            session.rollback()
            return "skipped"
        row = session.scalar(select(Delivery).where(Delivery.job_fk == job_id))
        row.sop_instance_uid, row.status = uid, status
        add_event(session, study_fk, "delivered", job=job_id, report=report_id,
                  version=number, destination=name, status=status)
        session.commit()
    metrics.DELIVERIES.labels(destination=name, outcome="done").inc()
    return "done"


def _write_draft(session: Session, plan: _Plan, job_id: int, draft: Any,
                 results: list[EngineResult], timings: dict[str, float], elapsed: float,
                 skipped: list[str]) -> None:
    from app.reports.service import open_report, write_draft

    study = session.get(Study, plan.study_id)
    report = open_report(session, study, plan.domain)
    version = write_draft(session, report, draft.to_dict(), [r.to_dict() for r in results],
                          author=",".join(sorted(timings.keys() - {"total"})), job_id=job_id)
    add_event(session, study.id, "finished", job=job_id, seconds=round(elapsed, 3),
              **({"skipped": skipped} if skipped else {}))
    add_event(session, study.id, "drafted", job=job_id, report=report.id,
              version=version.number)


def _write_answer(session: Session, plan: _Plan, job_id: int, result: EngineResult,
                  segs: dict[str, dict[str, str]], timings: dict[str, float],
                  elapsed: float) -> None:
    ask = session.get(Ask, plan.ask_id)
    ask.answer = asks.answer_of(result, segs, timings, plan.study.study_uid)
    add_event(session, plan.study_id, "answered", job=job_id, ask=ask.id,
              seconds=round(elapsed, 3))


def _discard_outputs(plan: _Plan | None) -> None:
    """Mask files of a job that wrote no draft belong to nothing."""
    if plan is not None and plan.study.output_dir is not None:
        shutil.rmtree(plan.study.output_dir, ignore_errors=True)
