"""Jobs: created when a study completes, sent to the domain's queue after commit, claimed by one
worker, finished once. The database is the source of truth; the broker only carries wake-ups.

- A study-complete event creates one Job per matched rule. The idempotency key (study, rule,
  pipeline, the set of instances) makes a second completion of the same content a no-op.
- The Celery message is sent after the transaction commits (``after_commit``), so a worker never
  sees a job that is not there yet.
- A worker claims a job with a conditional UPDATE (queued → started, with a fresh claim token);
  a re-delivered message finds it started or done and does nothing. Finishing is conditional on
  the claim, so a job taken back by the sweeper is never finished twice.
- The sweeper re-sends queued jobs whose message may be lost (Redis flushed, broker restarted)
  and takes back started jobs whose worker stopped beating its heart (killed mid-job).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Instance, Job, ModelValidation, Series, Study, utcnow
from app.dicom.headers import read_header
from app.pipeline import dispatch, routes_store
from app.pipeline.routing import StudyMeta, match, summarise
from app.timeline import add_event

log = logging.getLogger("medgate.jobs")


def idempotency_key(study_uid: str, rule: str, pipeline: list[str],
                    instance_uids: list[str], salt: str = "") -> str:
    """The same study content through the same rule and pipeline is one job; a re-analysis
    asked for by a person adds a salt of its own, so it is a new job even after a failure."""
    h = hashlib.sha256()
    for part in (study_uid, rule, ",".join(pipeline), *sorted(instance_uids), salt):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def study_metadata(session: Session, study: Study) -> tuple[list[dict[str, Any]], list[str]]:
    """Routing metadata per instance, from the index plus one header per series (for views
    and anything else the index does not hold)."""
    rows = session.execute(
        select(Instance, Series).join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id, Series.derived.is_(False))
        .order_by(Series.id, Instance.instance_number, Instance.id)).all()
    store = get_settings().store_dir
    per_series: dict[int, dict[str, Any]] = {}
    metadata, uids = [], []
    for inst, series in rows:
        if series.id not in per_series:
            try:
                per_series[series.id] = read_header(store / inst.path)
            except ValueError:
                per_series[series.id] = {}
        meta = {**per_series[series.id], "Modality": series.modality,
                "SOPClassUID": inst.sop_class_uid, "SOPInstanceUID": inst.sop_instance_uid,
                "BodyPartExamined": series.body_part, "StudyDescription": study.study_description,
                "SeriesDescription": series.series_description}
        metadata.append(meta)
        uids.append(inst.sop_instance_uid)
    return metadata, uids


class JobConflict(Exception):
    """A request that would start a second job while one of the study's jobs is still open."""


def route_study(session: Session, study: Study, salt: str = "",
                extra: tuple[str, ...] = ()) -> list[Job]:
    """Called in the completing transaction: route, and create the jobs (idempotently; a
    ``salt`` makes them new jobs, for a re-analysis). ``extra`` families, asked for by a
    clinician, run as optional engines after each rule's own."""
    from app.reports.service import open_report

    metadata, uids = study_metadata(session, study)
    meta: StudyMeta = summarise(metadata)
    matched = match(routes_store.load(session), meta)
    if not matched:
        study.route_status = "unrouted"
        add_event(session, study.id, "unrouted", modalities=sorted(meta.modalities),
                           sop_classes=sorted(meta.sop_class_uids))
        return []
    study.route_status = "routed"
    study.domain = matched[0].domain
    created = []
    for rule in matched:
        added = [f for f in extra if f not in rule.pipeline]
        steps = [f if required else f"{f}?" for f, required in rule.steps()]
        steps += [f"{f}?" for f in added]
        engines = rule.pipeline_json() + [{"family": f, "required": False} for f in added]
        key = idempotency_key(study.study_uid, rule.name, steps, uids, salt)
        if session.scalar(select(Job.id).where(Job.idempotency_key == key)) is not None:
            continue
        open_report(session, study, rule.domain)
        job = Job(study_fk=study.id, idempotency_key=key, domain=rule.domain,
                  pipeline="+".join(steps)[:64], engines=engines, rule=rule.name,
                  queue=rule.queue, instance_uids=uids, state="queued", queued_at=utcnow())
        session.add(job)
        session.flush()
        add_event(session, study.id, "queued", job=job.id, domain=rule.domain,
                           rule=rule.name)
        send_after_commit(session, job)
        created.append(job)
    return created


def send_after_commit(session: Session, job: Job) -> None:
    """Send the job's message once the transaction that made it commits."""
    dispatch.send_after_commit(session, job.id, job.queue)


def open_jobs(session: Session, study: Study) -> list[int]:
    """Ids of the study's jobs that are queued or running."""
    return list(session.scalars(select(Job.id).where(Job.study_fk == study.id,
                                                     Job.kind == "analysis",
                                                     Job.state.in_(("queued", "started")))))


def reanalyze(session: Session, study: Study, actor: str,
              extra: tuple[str, ...] = ()) -> list[Job]:
    """New jobs for the study's current instances through the current rules, even when an
    identical job ran (or failed) before. Refused while one of its jobs is still open."""
    running = open_jobs(session, study)
    if running:
        raise JobConflict(f"job {running[0]} of this study is still queued or running; "
                          "wait for it to finish")
    add_event(session, study.id, "reanalysis", by=actor, **({"engines": list(extra)}
                                                            if extra else {}))
    return route_study(session, study, salt=uuid.uuid4().hex, extra=extra)


send = dispatch.send  # the sweeper re-sends through the same path


def claim(session: Session, job_id: int) -> str | None:
    """Take a queued job; None when it is not queued (done, failed, or someone else's)."""
    token = uuid.uuid4().hex
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "queued")
        .values(state="started", claim=token, started_at=now, heartbeat_at=now,
                attempts=Job.attempts + 1))
    if result.rowcount != 1:
        session.rollback()
        return None
    job = session.get(Job, job_id)
    add_event(session, job.study_fk, "started", job=job_id, attempt=job.attempts)
    session.commit()
    return token


def heartbeat(session: Session, job_id: int, token: str) -> bool:
    r = session.execute(update(Job).where(Job.id == job_id, Job.claim == token,
                                          Job.state == "started").values(heartbeat_at=utcnow()))
    session.commit()
    return r.rowcount == 1


def finish(session: Session, job_id: int, token: str, timings: dict[str, Any]) -> bool:
    """Mark done inside the caller's transaction (with the draft); False if the claim is lost."""
    r = session.execute(update(Job).where(Job.id == job_id, Job.claim == token,
                                          Job.state == "started")
                        .values(state="done", finished_at=utcnow(), timings=timings, error=None))
    return r.rowcount == 1


def set_timings(session: Session, job_id: int, timings: dict[str, Any]) -> None:
    """The finished job's timings with the stages measured after ``finish`` (the write)."""
    session.execute(update(Job).where(Job.id == job_id).values(timings=timings))


def fail(session: Session, job_id: int, token: str, reason: str) -> None:
    r = session.execute(update(Job).where(Job.id == job_id, Job.claim == token,
                                          Job.state == "started")
                        .values(state="failed", finished_at=utcnow(), error=reason[:2000]))
    if r.rowcount == 1:
        job = session.get(Job, job_id)
        add_event(session, job.study_fk, "failed", job=job_id, reason=reason[:500])
        _fail_validation(session, job_id, reason)
    session.commit()


def _fail_validation(session: Session, job_id: int, reason: str) -> None:
    """A validation whose job failed has no outcome and never will: it fails too, so the
    version can be validated again."""
    session.execute(update(ModelValidation).where(ModelValidation.job_fk == job_id,
                                                  ModelValidation.state == "queued")
                    .values(state="failed", finished_at=utcnow(),
                            error=f"its job failed: {reason}"[:2000]))


def release(session: Session, job_id: int, token: str, reason: str) -> bool:
    """Give a job back to the queue after a transient error (the task retries it)."""
    r = session.execute(update(Job).where(Job.id == job_id, Job.claim == token,
                                          Job.state == "started")
                        .values(state="queued", claim=None, queued_at=utcnow(), resends=0,
                                error=f"retrying: {reason[:500]}"))
    session.commit()
    return r.rowcount == 1


def sweep(session_factory, now: datetime | None = None) -> dict[str, list[int]]:
    """Re-send queued jobs whose message may be lost; take back jobs whose worker died."""
    s = get_settings()
    now = now or utcnow()
    out: dict[str, list[int]] = {"resent": [], "requeued": [], "failed": []}
    with session_factory() as session:
        lost = session.scalars(select(Job).where(
            Job.state == "started",
            Job.heartbeat_at < now - timedelta(seconds=s.job_lost_seconds))).all()
        for job in lost:
            if job.attempts >= s.job_max_attempts:
                values = {"state": "failed", "finished_at": now, "claim": None,
                          "error": f"the worker was lost {job.attempts} times"}
                kind, bucket = "failed", "failed"
            else:
                values = {"state": "queued", "claim": None, "queued_at": now, "resends": 0}
                kind, bucket = "requeued", "requeued"
            r = session.execute(update(Job).where(Job.id == job.id, Job.claim == job.claim,
                                                  Job.state == "started").values(**values))
            if r.rowcount == 1:
                add_event(session, job.study_fk, kind, job=job.id, reason="worker lost")
                if bucket == "failed":
                    _fail_validation(session, job.id, values["error"])
                session.commit()
                out[bucket].append(job.id)
                if bucket == "requeued":
                    send(job.id, job.queue)
            else:
                session.rollback()
        # A queued job may just be waiting behind others: the wait before each re-send doubles
        # (up to 32 times the first), so a long queue is not flooded with duplicates.
        stale = session.scalars(select(Job).where(
            Job.state == "queued",
            Job.queued_at < now - timedelta(seconds=s.job_resend_seconds))).all()
        for job in stale:
            wait = timedelta(seconds=s.job_resend_seconds * 2 ** min(job.resends, 5))
            if now - job.queued_at < wait:
                continue
            r = session.execute(update(Job).where(Job.id == job.id, Job.state == "queued",
                                                  Job.queued_at == job.queued_at)
                                .values(queued_at=now, resends=Job.resends + 1))
            session.commit()
            if r.rowcount == 1 and send(job.id, job.queue):
                out["resent"].append(job.id)
    return out


def job_dict(job: Job) -> dict[str, Any]:
    def t(v: datetime | None) -> str | None:
        return v.isoformat() if v else None

    return {"id": job.id, "kind": job.kind, "domain": job.domain, "rule": job.rule,
            "pipeline": job.engines, "queue": job.queue, "state": job.state,
            "attempts": job.attempts,
            "error": job.error, "created_at": t(job.created_at), "queued_at": t(job.queued_at),
            "started_at": t(job.started_at), "finished_at": t(job.finished_at),
            "timings": job.timings}
