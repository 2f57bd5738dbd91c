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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import metrics
from app.config import get_settings
from app.db.models import (
    Ask,
    Delivery,
    Instance,
    Job,
    ModelValidation,
    ModelVersion,
    Patient,
    Series,
    Study,
)
from app.db.session import session_factory
from app.dicom.headers import read_header
from app.pipeline import asks, derived, jobs
from app.pipeline.families import load_plugins
from app.pipeline.routing import pipeline_steps
from app.rag.corpus import knowledge_lookup
from app.rag.search import knowledge_search
from app.registry import figures, lifecycle
from app.registry.figures import Run
from app.registry.versions import Resolved, resolve, resolve_shadow
from app.reports.composer import compose
from app.timeline import add_event
from models.base import ContractError, EngineResult, InstanceRef, SeriesInput, StudyInput
from models.phrasing import labeller_for
from models.runtime.cache import EngineCache, engine_key
from models.runtime.device import dtype_name, resolve_device, resolve_dtype
from models.runtime.manifest import ManifestError

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
    rule: str = ""
    # versions shadowing a family on this job's rule: run beside it, stored, never drafted
    shadows: dict[str, Resolved] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)


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
    models, shadows = {}, {}
    for family, _ in steps:
        dtype = dtype_name(resolve_dtype(device, settings.dtype_by_family.get(family)))
        models[family] = resolve(session, family, device=device, dtype=dtype, rule=job.rule)
        shadow = None if ask is not None else resolve_shadow(session, family, device=device,
                                                              dtype=dtype, rule=job.rule)
        # a version shadowing every rule and active on this one would only run twice
        if shadow is not None and shadow.version_id != models[family].version_id:
            shadows[family] = shadow
        if (ask is not None and models[family].spec.variant == "reference"
                and not settings.allow_reference_answers):
            # the trained version the ask was accepted for was deactivated since
            raise PermanentError(f"{family} has no trained, active version any more; the "
                                 "reference model does not answer clinicians")
    return _Plan(study.id, job.domain, steps, data, models, ask.id if ask else None,
                 rule=job.rule, shadows=shadows)


# ---------------------------------------------------------------------------- running engines

class EngineTimeout(Exception):
    """An engine run that did not finish within MEDGATE_ENGINE_TIMEOUT_SECONDS."""


def _call(fn, timeout: float):  # noqa: ANN001, ANN202 - any engine call
    """``fn()``, given up after ``timeout`` seconds (0: no limit). Python cannot stop a thread:
    an abandoned run goes on in the background and its engine is never used again."""
    if not timeout:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the job's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="medgate-engine", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise EngineTimeout(f"did not finish within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _run_one(cache: EngineCache, resolved: Resolved, study: StudyInput, keep: frozenset,
             role: str) -> tuple[EngineResult, Run]:
    """One engine on the study: its result and the run as it will be recorded. Raises what
    the engine raised, with the failed or timed-out run attached as ``exc.run``."""
    spec = resolved.spec
    run = Run(spec.family, spec.version, resolved.version_id, role, "failed")
    started = time.perf_counter()
    try:
        engine, run.load_seconds = cache.get_loaded(spec, resolved.manifest, keep)
        started = time.perf_counter()
        result = _call(lambda: engine.run(study), get_settings().engine_timeout_seconds)
        if not isinstance(result, EngineResult):
            raise PermanentError(f"returned {type(result).__name__}, not an EngineResult")
    except Exception as exc:
        run.run_seconds = round(time.perf_counter() - started, 4)
        if isinstance(exc, EngineTimeout):
            run.outcome = "timed_out"
            cache.discard(spec)
        run.error = str(exc) if isinstance(exc, PermanentError | ContractError | EngineTimeout) \
            else f"{type(exc).__name__}: {exc}"
        exc.run = run  # type: ignore[attr-defined]
        raise
    run.outcome, run.run_seconds, run.trained = "done", round(time.perf_counter() - started, 4), \
        result.trained
    said = figures.stated(result.to_dict())
    run.findings = [{"code": k, **v} for k, v in said.items()]
    return result, run


def _quarantine(resolved: Resolved, exc: ManifestError, plan: _Plan) -> Resolved:
    """Weights that no longer match: quarantine the version (its assignments end) and return
    what the family's jobs run now (the next assignment, else the built-in default)."""
    spec = resolved.spec
    with session_factory()() as session:
        row = session.get(ModelVersion, resolved.version_id)
        lifecycle.quarantine(session, row, f"weights changed since registration: {exc}",
                             actor="worker")
        session.commit()
        log.warning("quarantined %s@%s: %s", spec.family, spec.version, exc)
        return resolve(session, spec.family, device=spec.device, dtype=spec.dtype,
                       rule=plan.rule)


def run_engines(plan: _Plan) -> tuple[list[EngineResult], dict[str, float], list[str]]:
    """Run the plan's engines in order, each shadow beside its family: results, seconds per
    engine, and the warnings of optional engines that were skipped or versions quarantined.
    Every run (shadows included) is added to ``plan.runs``."""
    cache = engine_cache()
    results, timings, skipped = [], {}, []
    for family, required in plan.steps:
        resolved = plan.models[family]
        shadow = plan.shadows.get(family)
        keep = frozenset(engine_key(r.spec) for r in (resolved, shadow) if r is not None)
        plan.study.earlier = list(results)
        try:
            try:
                result, run = _run_one(cache, resolved, plan.study, keep, "active")
            except ManifestError as exc:
                if resolved.version_id is None or plan.ask_id is not None:
                    raise
                plan.runs.append(exc.run)  # type: ignore[attr-defined]
                was = f"{family}@{resolved.spec.version}"
                resolved = plan.models[family] = _quarantine(resolved, exc, plan)
                skipped.append(f"{was} was quarantined ({exc}); "
                               f"{family}@{resolved.spec.version} ran instead")
                keep = frozenset(engine_key(r.spec) for r in (resolved, shadow) if r)
                result, run = _run_one(cache, resolved, plan.study, keep, "active")
        except Exception as exc:
            if hasattr(exc, "run"):
                plan.runs.append(exc.run)
            spec = resolved.spec
            kind = _classify(exc)
            # the contract's own errors (a manifest, a strict load, bad input) say it all
            reason = (str(exc) if isinstance(exc, PermanentError | ContractError | EngineTimeout)
                      else f"{type(exc).__name__}: {exc}")
            if kind is TransientError:
                raise TransientError(f"engine {family}@{spec.version} failed: {reason}") from exc
            if required:
                raise PermanentError(f"engine {family}@{spec.version} failed: {reason}") from exc
            log.info("optional engine %s@%s skipped: %s", family, spec.version, reason)
            metrics.ENGINE_SKIPPED.labels(domain=plan.domain, engine=family).inc()
            skipped.append(f"optional engine {family}@{spec.version} was skipped: {reason}")
            continue
        plan.runs.append(run)
        timings[f"{family}@{resolved.spec.version}"] = run.run_seconds
        metrics.ENGINE_RUN.labels(domain=plan.domain, engine=family).observe(run.run_seconds)
        if shadow is not None:
            plan.runs.append(_run_shadow(cache, shadow, plan, results, result, keep))
        results.append(result)
    return results, timings, skipped


def _run_shadow(cache: EngineCache, shadow: Resolved, plan: _Plan, earlier: list[EngineResult],
                active: EngineResult, keep: frozenset) -> Run:
    """A shadow version on the same study, with the same earlier results, writing into a
    folder of its own; whatever happens to it, the job goes on."""
    out = plan.study.output_dir
    study = replace(plan.study, output_dir=out / f"shadow-{shadow.spec.family}" if out else None,
                    earlier=list(earlier))
    try:
        return _shadow_run(cache, shadow, study, keep, active)
    finally:
        # shadow outputs (masks) are compared, never kept: no patient-derived file is left
        if study.output_dir is not None:
            shutil.rmtree(study.output_dir, ignore_errors=True)


def _shadow_run(cache: EngineCache, shadow: Resolved, study: StudyInput, keep: frozenset,
                active: EngineResult) -> Run:
    try:
        result, run = _run_one(cache, shadow, study, keep, "shadow")
    except ManifestError as exc:
        with session_factory()() as session:
            lifecycle.quarantine(session, session.get(ModelVersion, shadow.version_id),
                                 f"weights changed since registration: {exc}", actor="worker")
            session.commit()
        return exc.run  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - a shadow never fails a job
        log.info("shadow %s@%s failed: %s", shadow.spec.family, shadow.spec.version, exc)
        return getattr(exc, "run", Run(shadow.spec.family, shadow.spec.version,
                                       shadow.version_id, "shadow", "failed", error=str(exc)))
    run.result = result.to_dict()
    run.comparison = figures.compare_states(figures.stated(active.to_dict()),
                                            {f["code"]: f for f in run.findings})
    return run


class _Stages:
    """Where a job's seconds went (``timings["stages"]``): queue wait (queued to claimed),
    plan (headers, routing, knowledge), load and run (the active engines; shadows apart),
    derived (SEG and annotations), compose, write (the draft or answer, events and runs, up
    to the commit)."""

    def __init__(self, queue_wait: float | None) -> None:
        self.stages: dict[str, float] = {}
        if queue_wait is not None:
            self.stages["queue_wait"] = round(queue_wait, 4)
        self.mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self.mark, 4)
        self.mark = now

    def engines(self, runs: list[Run]) -> None:
        now = time.perf_counter()
        active = [r for r in runs if r.role == "active"]
        load = sum(r.load_seconds or 0.0 for r in active)
        run = sum(r.run_seconds or 0.0 for r in active)
        self.stages.update(load=round(load, 4), run=round(run, 4),
                           shadow=round(max(0.0, now - self.mark - load - run), 4))
        self.mark = now


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
        queue_wait = None
        if job.queued_at and job.started_at:
            queue_wait = max(0.0, (job.started_at - job.queued_at).total_seconds())
            metrics.QUEUE_WAIT.labels(domain=job.domain).observe(queue_wait)
    heart = _Heart(job_id, token)
    heart.start()
    started = time.perf_counter()
    plan: _Plan | None = None
    try:
        if kind == "export":
            return _deliver(factory, job_id, token, started)
        if kind == "validate":
            return _validate(factory, job_id, token, started)
        clock = _Stages(queue_wait)
        with factory() as session:
            plan = _plan(session, job_id)
            session.rollback()  # no transaction stays open while the models run
        clock.lap("plan")
        results, timings, skipped = run_engines(plan)
        clock.engines(plan.runs)
        # masks become DICOM SEG instances of the study, point sets bulk annotations: every
        # mask of an ask (which says whether its model is trained), and trained results' own
        kept = [r for r in results if plan.ask_id is not None or r.trained]
        segs = derived.store_masks(factory, plan.study, kept)
        derived.store_annotations(factory, plan.study, kept)
        clock.lap("derived")
        draft = None if plan.ask_id is not None else compose(
            results, knowledge_lookup(), warnings=skipped, labeller=labeller_for(plan.domain))
        clock.lap("compose")
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
            figures.record_runs(session, job_id, plan.runs)
            clock.lap("write")
            jobs.set_timings(session, job_id, {**timings, "stages": clock.stages})
            session.commit()
        figures.count_runs(plan.runs)
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
        if plan is not None and plan.runs:
            with factory() as session:
                figures.record_runs(session, job_id, plan.runs)
                session.commit()
            figures.count_runs(plan.runs)
        metrics.JOBS_FINISHED.labels(domain=domain, outcome="failed").inc()
        return "failed"
    finally:
        heart.stop_event.set()


def _validate(factory, job_id: int, token: str, started: float) -> str:  # noqa: ANN001
    """Validate a model version on its family's bundled study (``app.registry.cases``): a
    fresh engine, loaded strictly, outside this worker's engine cache. The outcome (pass or
    fail, times, peak memory, the error) is the validation's; the job itself is done."""
    import socket

    from app.registry.cases import run_validation
    from app.registry.versions import manifest_of, spec_of
    from models.runtime.validate import describe_error, failed

    settings = get_settings()
    with factory() as session:
        v = session.scalar(select(ModelValidation).where(ModelValidation.job_fk == job_id))
        if v is None:
            raise PermanentError(f"job {job_id} validates a version that was deleted")
        row = session.get(ModelVersion, v.version_fk)
        try:
            device = resolve_device(settings.device)
        except ValueError as exc:
            raise PermanentError(f"MEDGATE_DEVICE: {exc}") from exc
        dtype = dtype_name(resolve_dtype(device, settings.dtype_by_family.get(row.family)))
        spec, manifest, validation_id = spec_of(row, device, dtype), manifest_of(row), v.id
        session.rollback()
    out = settings.results_dir / "validation" / f"{validation_id}"
    load_plugins()  # a site's own family is validated like a built-in one
    try:
        # bounded like any engine call: a model that hangs fails its validation
        outcome = _call(lambda: run_validation(spec, manifest, output_dir=out),
                        settings.engine_timeout_seconds)
    except Exception as exc:  # noqa: BLE001 - a case that cannot be read fails the validation
        outcome = failed(describe_error(exc), "case")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    with factory() as session:
        if not jobs.finish(session, job_id, token,
                           {"total": round(time.perf_counter() - started, 4)}):
            session.rollback()
            return "skipped"
        v = lifecycle.record_validation(session, validation_id, outcome, device,
                                        socket.gethostname())
        if any(c.get("check") == "manifest" and not c.get("passed") for c in outcome.checks):
            lifecycle.quarantine(session, session.get(ModelVersion, v.version_fk),
                                 outcome.error or "weights changed since registration",
                                 actor="worker")
        session.commit()
    log.info("validation %s of %s@%s: %s", validation_id, spec.family, spec.version,
             "passed" if outcome.passed else f"failed ({outcome.error})")
    return "done"


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
                          author=",".join(sorted(k for k in timings if "@" in k)), job_id=job_id)
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
