"""A model version's life cycle: validate, shadow, activate (on every rule or on one), roll
back, retire, and quarantine when its weights no longer match their manifest.

::

    registered --validate (passed)--> validated --shadow--> shadow --activate--> active
         ^  |                             |  ^------stop shadow-----'              |
         |  '--validate (failed): stays registered                    roll back / another
         |                                                            activation: validated
    quarantined <-- weights changed (any status) ; validate again (passed) --> validated
    retired <-- retire (any status but active; final)

Who runs what is held by assignments (``ModelAssignment``): a version is active or shadow for
a family on every rule (``rule == ""``) or on one routing rule. A version's status is derived
from its open assignments and its last validation, except retired and quarantined, which stick.
Every change is audited with the acting key and the reason; workers read the assignments at
the start of each job, so a change takes effect on the next job.
"""

from __future__ import annotations

import uuid
import zlib
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app import metrics
from app.db.models import Job, ModelAssignment, ModelValidation, ModelVersion, utcnow
from app.pipeline import dispatch, routes_store
from app.pipeline.routing import RouteRule
from app.registry.defaults import default_spec
from app.registry.versions import (
    BUILD_ERRORS,
    NotRegistered,
    RegistryError,
    assigned,
    get_version,
    manifest_of,
    open_assignments,
    spec_of,
    weights_location,
)
from app.security import audit
from models.base import DOMAINS, ModelSpec, build
from models.runtime.manifest import ManifestError, verify_manifest


def _lock(session: Session, family: str) -> None:
    """One life-cycle change per family at a time, until the transaction ends: two
    administrators (or an administrator and a worker's validation) acting at once would each
    end the same assignment and open their own. PostgreSQL takes a transaction advisory lock;
    SQLite serialises writers itself. The partial unique index on open assignments backs it."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"medgate-model-family:{family}".encode()) - (1 << 31)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _rid(row: ModelVersion) -> str:
    return f"{row.family}@{row.version}"


def _reason(reason: str | None, verb: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise RegistryError(f"{verb} needs a reason (it is kept in the audit log)",
                            code="reason-required")
    return text[:2000]


def _usable(row: ModelVersion, verb: str) -> None:
    if row.status == "retired":
        raise RegistryError(f"{_rid(row)} is retired and cannot be {verb}; register a new "
                            "version", 409, "retired")
    if row.status == "quarantined":
        raise RegistryError(f"{_rid(row)} is quarantined ({row.status_reason}); restore its "
                            "weights and validate it again", 409, "quarantined")


def last_validation(session: Session, row: ModelVersion) -> ModelValidation | None:
    return session.scalar(select(ModelValidation).where(
        ModelValidation.version_fk == row.id, ModelValidation.state.in_(("passed", "failed")))
        .order_by(ModelValidation.id.desc()).limit(1))


def _require_validated(session: Session, row: ModelVersion, verb: str) -> None:
    last = last_validation(session, row)
    if last is None or last.state != "passed":
        said = "has not been validated" if last is None else \
            f"failed its last validation ({last.error})"
        raise RegistryError(f"{_rid(row)} {said}; it cannot be {verb} before it passes "
                            f"(POST /api/v1/admin/models/{row.family}/{row.version}/validate)",
                            409, "not-validated")


def refresh_status(session: Session, row: ModelVersion) -> None:
    """The status that follows from the version's open assignments and last validation."""
    if row.status in ("retired", "quarantined"):
        return
    session.flush()
    roles = set(session.scalars(select(ModelAssignment.role).where(
        ModelAssignment.version_fk == row.id, ModelAssignment.ended_at.is_(None))))
    if "active" in roles:
        status = "active"
    elif "shadow" in roles:
        status = "shadow"
    else:
        last = last_validation(session, row)
        status = "validated" if last is not None and last.state == "passed" else "registered"
    if status != row.status:
        row.status, row.status_reason, row.updated_at = status, None, utcnow()


def _end(session: Session, a: ModelAssignment, actor: str) -> None:
    a.ended_at, a.ended_by = utcnow(), actor
    if a.version_fk:
        session.flush()
        refresh_status(session, session.get(ModelVersion, a.version_fk))


def quarantine(session: Session, row: ModelVersion, reason: str, actor: str = "system") -> None:
    """Take a version whose weights no longer match out of service: its assignments end (jobs
    fall back to the next assignment or the built-in default) and it cannot be activated until
    its weights are restored and it passes validation again."""
    _lock(session, row.family)
    session.refresh(row)
    if row.status in ("quarantined", "retired"):
        return  # retired is final: a late validation or check does not bring it back
    ended, restored = [], []
    for a in list(session.scalars(select(ModelAssignment).where(
            ModelAssignment.version_fk == row.id, ModelAssignment.ended_at.is_(None)))):
        a.ended_at, a.ended_by = utcnow(), actor
        ended.append({"role": a.role, "rule": a.rule})
        if a.role == "active" and a.replaces_fk:
            restored.append(_restore(session, a, f"{_rid(row)} was quarantined", actor))
    session.flush()
    row.status, row.status_reason, row.updated_at = "quarantined", reason[:2000], utcnow()
    audit.record(session, actor, "model.quarantine", "model_version", _rid(row),
                 outcome="failure", detail={"reason": reason[:500], "ended": ended,
                                            "restored": [r for r in restored if r]})
    metrics.MODELS_QUARANTINED.labels(family=row.family, version=row.version).inc()


def _restore(session: Session, leaving: ModelAssignment, why: str, actor: str) -> str | None:
    """Reopen the assignment ``leaving`` replaced (its version, or the built-in default), as a
    rollback would, when that version can still run."""
    before = session.get(ModelAssignment, leaving.replaces_fk)
    target = session.get(ModelVersion, before.version_fk) if before.version_fk else None
    if target is not None and target.status in ("retired", "quarantined"):
        return None
    session.flush()  # ``leaving`` is ended before its rule gets its next open assignment
    session.add(ModelAssignment(family=leaving.family, rule=leaving.rule, role="active",
                                version_fk=before.version_fk, replaces_fk=before.replaces_fk,
                                reason=f"{why}: back to what it replaced", started_by=actor,
                                started_at=utcnow()))
    session.flush()
    if target is not None:
        refresh_status(session, target)
    return _rid(target) if target is not None else f"{leaving.family}@default"


def verify_or_quarantine(session: Session, row: ModelVersion, actor: str) -> None:
    """Verify the version's weights against its manifest; on a mismatch quarantine it (in the
    caller's transaction, which the caller commits) and refuse."""
    manifest = manifest_of(row)
    if manifest is None or not row.weights_path:
        return
    try:
        verify_manifest(weights_location(row.weights_path), manifest)
    except ManifestError as exc:
        quarantine(session, row, f"weights changed since registration: {exc}", actor)
        raise RegistryError(f"the weights of {_rid(row)} changed since registration: {exc}; "
                            "the version is quarantined", 409, "quarantined") from exc


# ---------------------------------------------------------------------------- routing checks

def _rules(session: Session, family: str, rule: str) -> list[RouteRule]:
    """The routing rules a change for ``family`` on ``rule`` ("" = every rule) affects."""
    rules = routes_store.load(session)
    if not rule:
        return [r for r in rules if family in r.pipeline]
    named = next((r for r in rules if r.name == rule), None)
    if named is None:
        raise RegistryError(f"no routing rule is named {rule!r}; rules: "
                            f"{[r.name for r in rules]}", code="unknown-rule")
    if family not in named.pipeline:
        raise RegistryError(f"rule {rule!r} does not run {family} (its pipeline is "
                            f"{list(named.pipeline)})", code="rule-without-family")
    return [named]


def _check_runnable(spec: ModelSpec, what: str, rules: list[RouteRule]) -> None:
    """Refuse a change that would leave one of ``rules`` with no engine that can run: the
    engine must build from its spec and take the rule's domain."""
    names = [r.name for r in rules]
    try:
        engine = build(spec)
    except BUILD_ERRORS as exc:
        raise RegistryError(f"{what} cannot be built ({exc}); rule(s) {names} would have no "
                            "runnable engine", 409, "not-runnable") from exc
    domains = tuple(getattr(engine, "domains", ()) or DOMAINS)
    wrong = [r.name for r in rules if r.domain not in domains]
    if wrong:
        raise RegistryError(f"{what} analyses {list(domains)} studies; rule(s) {wrong} route "
                            "other domains and would have no runnable engine", 409,
                            "not-runnable")


def _exact(session: Session, family: str, role: str, rule: str) -> ModelAssignment | None:
    return next((a for a in open_assignments(session, family, role) if a.rule == rule), None)


def _assign(session: Session, family: str, role: str, rule: str, row: ModelVersion | None,
            actor: str, reason: str, replaces: ModelAssignment | None) -> ModelAssignment:
    a = ModelAssignment(family=family, rule=rule, role=role,
                        version_fk=row.id if row is not None else None,
                        replaces_fk=replaces.id if replaces is not None else None,
                        reason=reason, started_by=actor, started_at=utcnow())
    session.add(a)
    session.flush()
    if row is not None:
        refresh_status(session, row)
    return a


# ---------------------------------------------------------------------------- verbs

def request_validation(session: Session, family: str, version: str,
                       actor: str) -> ModelValidation:
    """Queue a validation job for a worker of the family's queue; a validation already queued
    for the version is returned as it is."""
    from app.registry.cases import CaseError, site_cases_dir
    from models.validation import case_for

    _lock(session, family)
    row = get_version(session, family, version)
    if row.status == "retired":
        raise RegistryError(f"{_rid(row)} is retired; register a new version", 409, "retired")
    queued = session.scalar(select(ModelValidation).where(
        ModelValidation.version_fk == row.id, ModelValidation.state == "queued"))
    if queued is not None:
        job = session.get(Job, queued.job_fk) if queued.job_fk else None
        if job is not None and job.state not in ("failed", "done"):
            return queued
        # its job failed or is gone (a worker that could not start it): it never will run
        queued.state, queued.finished_at = "failed", utcnow()
        queued.error = (f"its job ended without an outcome: {job.error}" if job is not None
                        and job.error else "its job ended without an outcome")[:2000]
    try:
        case = case_for(family, [site_cases_dir()])
    except CaseError as exc:
        raise RegistryError(str(exc), code="no-validation-study") from exc
    domain = case.domain if case.domain in DOMAINS else "cxr"
    queue = next((r.queue for r in routes_store.load(session) if family in r.pipeline), domain)
    job = Job(study_fk=None, kind="validate", idempotency_key=f"validate:{uuid.uuid4().hex}",
              domain=domain, pipeline=f"validate:{family}"[:64], engines=[family], rule="",
              queue=queue, instance_uids=[], state="queued", queued_at=utcnow())
    session.add(job)
    session.flush()
    v = ModelValidation(version_fk=row.id, job_fk=job.id, case=case.name, state="queued",
                        requested_by=actor)
    session.add(v)
    session.flush()
    dispatch.send_after_commit(session, job.id, queue)
    audit.record(session, actor, "model.validate", "model_version", _rid(row),
                 detail={"validation": v.id, "job": job.id, "case": case.name})
    return v


def record_validation(session: Session, validation_id: int, outcome: Any, device: str,
                      worker: str) -> ModelValidation:
    """A worker's validation outcome (``models.runtime.validate.ValidationOutcome``). A pass
    clears a quarantine (the weights were restored); a manifest mismatch quarantines."""
    v = session.get(ModelValidation, validation_id)
    _lock(session, session.get(ModelVersion, v.version_fk).family)
    row = session.get(ModelVersion, v.version_fk, populate_existing=True)
    v.state = "passed" if outcome.passed else "failed"
    v.load_seconds, v.run_seconds = outcome.load_seconds, outcome.run_seconds
    v.peak_memory_bytes, v.peak_gpu_bytes = outcome.peak_memory_bytes, outcome.peak_gpu_bytes
    v.error, v.checks, v.summary = outcome.error, list(outcome.checks), dict(outcome.summary)
    v.device, v.worker, v.finished_at = device, worker[:255], utcnow()
    if outcome.passed and row.status == "quarantined":
        row.status, row.status_reason = "registered", None
    session.flush()
    refresh_status(session, row)
    audit.record(session, "worker", "model.validated", "model_version", _rid(row),
                 outcome="success" if outcome.passed else "failure",
                 detail={"validation": v.id, "passed": outcome.passed,
                         "error": (outcome.error or "")[:500]})
    return v


def shadow(session: Session, family: str, version: str, actor: str, reason: str | None,
           rule: str = "") -> ModelAssignment:
    """Run ``version`` beside the active one on live studies of the family's rules (or one
    rule): its results are stored and compared, never drafted."""
    why = _reason(reason, "shadowing")
    _lock(session, family)
    row = get_version(session, family, version)
    _usable(row, "shadowed")
    _require_validated(session, row, "shadowed")
    rules = _rules(session, family, rule)
    # on every rule it would shadow, it must not be what that rule runs already
    running = [r.name for r in rules if assigned(session, family, "active", r.name)[1] is row]
    if running:
        raise RegistryError(f"{_rid(row)} is the active version on rule(s) {running}; it "
                            "cannot shadow itself", 409, "already-active")
    _check_runnable(spec_of(row), _rid(row), rules)
    verify_or_quarantine(session, row, actor)
    current = _exact(session, family, "shadow", rule)
    if current is not None:
        if current.version_fk == row.id:
            raise RegistryError(f"{_rid(row)} already shadows {family}"
                                f"{f' on rule {rule!r}' if rule else ''}", 409,
                                "already-shadow")
        _end(session, current, actor)
    a = _assign(session, family, "shadow", rule, row, actor, why, current)
    audit.record(session, actor, "model.shadow", "model_version", _rid(row),
                 detail={"reason": why, "rule": rule})
    return a


def stop_shadow(session: Session, family: str, version: str, actor: str,
                reason: str | None) -> ModelVersion:
    text = _reason(reason, "stopping a shadow")
    _lock(session, family)
    row = get_version(session, family, version)
    ended = [a for a in open_assignments(session, family, "shadow") if a.version_fk == row.id]
    if not ended:
        raise RegistryError(f"{_rid(row)} is not shadowing", 409, "not-shadow")
    for a in ended:
        _end(session, a, actor)
    audit.record(session, actor, "model.shadow_stop", "model_version", _rid(row),
                 detail={"reason": text, "rules": [a.rule for a in ended]})
    return row


def activate(session: Session, family: str, version: str, actor: str, reason: str | None,
             rule: str = "") -> ModelAssignment:
    """Make ``version`` the one the family's jobs run, on every rule or on one. The version
    must have passed validation, its weights must match, and every affected rule must keep a
    runnable engine; a shadow of the same version on the same rule becomes the activation."""
    text = _reason(reason, "activation")
    _lock(session, family)
    row = get_version(session, family, version)
    _usable(row, "activated")
    _require_validated(session, row, "activated")
    rules = _rules(session, family, rule)
    current = _exact(session, family, "active", rule)
    if current is not None and current.version_fk == row.id:
        raise RegistryError(f"{_rid(row)} is already active"
                            f"{f' on rule {rule!r}' if rule else ''}", 409, "already-active")
    _check_runnable(spec_of(row), _rid(row), rules)
    verify_or_quarantine(session, row, actor)
    same = _exact(session, family, "shadow", rule)
    if same is not None and same.version_fk == row.id:
        _end(session, same, actor)
    if current is not None:
        _end(session, current, actor)
    a = _assign(session, family, "active", rule, row, actor, text, current)
    previous = (session.get(ModelVersion, current.version_fk)
                if current is not None and current.version_fk else None)
    audit.record(session, actor, "model.activate", "model_version", _rid(row),
                 detail={"reason": text, "rule": rule,
                         "replaces": _rid(previous) if previous else "built-in default"})
    return a


def rollback(session: Session, family: str, actor: str, reason: str | None,
             rule: str = "") -> ModelAssignment | None:
    """Back to the version that was active before the current one (on every rule, or on one
    rule), in one call. Before a family's first activation that is the built-in default; a
    rule's first activation rolls back to what runs on every rule (its own assignment ends,
    None is returned). A second rollback undoes the first."""
    text = _reason(reason, "a rollback")
    _lock(session, family)
    rules = _rules(session, family, rule)
    current = _exact(session, family, "active", rule)
    if current is None:
        raise RegistryError(f"no version of {family} is active"
                            f"{f' on rule {rule!r}' if rule else ''}; nothing to roll back",
                            409, "nothing-to-roll-back")
    before = session.get(ModelAssignment, current.replaces_fk) if current.replaces_fk else None
    leaving = session.get(ModelVersion, current.version_fk) if current.version_fk else None
    # a rule's first activation rolls back to whatever runs on every rule
    follows = bool(rule) and before is None
    if follows:
        wide = next((a for a in open_assignments(session, family, "active") if a.rule == ""),
                    None)
        before = wide
    target = session.get(ModelVersion, before.version_fk) if before and before.version_fk \
        else None
    if target is not None:
        _usable(target, "rolled back to")
        _check_runnable(spec_of(target), _rid(target), rules)
        verify_or_quarantine(session, target, actor)
    else:
        _check_runnable(default_spec(family), f"{family}'s built-in default", rules)
    _end(session, current, actor)
    a = None if follows else _assign(session, family, "active", rule, target, actor, text,
                                     current)
    audit.record(session, actor, "model.rollback", "model_version",
                 _rid(leaving) if leaving else f"{family}@default",
                 detail={"reason": text, "rule": rule,
                         "to": (_rid(target) if target else "built-in default")
                         + (" (every rule's)" if follows else "")})
    return a


def retire(session: Session, family: str, version: str, actor: str,
           reason: str | None) -> ModelVersion:
    """Withdraw a version for good. An active version is refused: activate another one or roll
    back first, so no rule is left without the engine it runs."""
    text = _reason(reason, "retiring")
    _lock(session, family)
    row = get_version(session, family, version)
    if row.status == "retired":
        raise RegistryError(f"{_rid(row)} is already retired", 409, "retired")
    active = [a.rule or "every rule" for a in open_assignments(session, family, "active")
              if a.version_fk == row.id]
    if active:
        raise RegistryError(f"{_rid(row)} is active on {active}; activate another version or "
                            "roll back first", 409, "active")
    for a in open_assignments(session, family, "shadow"):
        if a.version_fk == row.id:
            a.ended_at, a.ended_by = utcnow(), actor
    for v in session.scalars(select(ModelValidation).where(
            ModelValidation.version_fk == row.id, ModelValidation.state == "queued")):
        v.state, v.error, v.finished_at = "failed", "the version was retired", utcnow()
    row.status, row.status_reason, row.updated_at = "retired", text, utcnow()
    audit.record(session, actor, "model.retire", "model_version", _rid(row),
                 detail={"reason": text})
    return row


__all__ = ["NotRegistered", "RegistryError", "activate", "quarantine", "request_validation",
           "record_validation", "retire", "rollback", "shadow", "stop_shadow"]
