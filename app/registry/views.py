"""Model versions as the admin API and CLI show them: a summary per version, and the detail
view with status history, manifest, validation runs and figures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelAssignment, ModelValidation, ModelVersion
from app.registry import figures
from app.registry.defaults import default_spec
from app.registry.versions import list_versions
from app.security import audit


def _t(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def _url(row: ModelVersion) -> str:
    return f"/api/v1/admin/models/{row.family}/{row.version}"


def _assignment(a: ModelAssignment, versions: dict[int, str]) -> dict[str, Any]:
    return {"id": a.id, "role": a.role, "rule": a.rule,
            "version": versions.get(a.version_fk, "built-in default") if a.version_fk
            else "built-in default",
            "reason": a.reason, "started_by": a.started_by, "started_at": _t(a.started_at),
            "ended_by": a.ended_by, "ended_at": _t(a.ended_at), "replaces": a.replaces_fk}


def validation_dict(v: ModelValidation) -> dict[str, Any]:
    return {"id": v.id, "job": v.job_fk, "case": v.case, "state": v.state,
            "requested_by": v.requested_by, "load_seconds": v.load_seconds,
            "run_seconds": v.run_seconds, "peak_memory_bytes": v.peak_memory_bytes,
            "peak_gpu_bytes": v.peak_gpu_bytes, "error": v.error, "checks": v.checks,
            "summary": v.summary, "device": v.device, "worker": v.worker,
            "created_at": _t(v.created_at), "finished_at": _t(v.finished_at)}


def _open_by_version(session: Session) -> dict[int | None, list[ModelAssignment]]:
    """Every open assignment in one query, by version id (None: the built-in default)."""
    out: dict[int | None, list[ModelAssignment]] = {}
    for a in session.scalars(select(ModelAssignment).where(ModelAssignment.ended_at.is_(None))
                             .order_by(ModelAssignment.id)):
        out.setdefault(a.version_fk, []).append(a)
    return out


def summaries(session: Session) -> list[dict[str, Any]]:
    """Every version's summary, in two queries whatever the number of versions."""
    current = _open_by_version(session)
    return [version_summary(session, r, current.get(r.id, [])) for r in list_versions(session)]


def version_summary(session: Session, row: ModelVersion,
                    current: list[ModelAssignment] | None = None) -> dict[str, Any]:
    if current is None:
        current = list(session.scalars(select(ModelAssignment).where(
            ModelAssignment.version_fk == row.id, ModelAssignment.ended_at.is_(None))))
    return {"family": row.family, "version": row.version, "variant": row.variant,
            "status": row.status, "status_reason": row.status_reason,
            "weights_path": row.weights_path, "sha256": row.sha256,
            "files": len((row.manifest or {}).get("files") or []) or (1 if row.sha256 else 0),
            "roles": [{"role": a.role, "rule": a.rule} for a in current],
            "registered_by": row.registered_by, "created_at": _t(row.created_at),
            "updated_at": _t(row.updated_at), "url": _url(row)}


def version_detail(session: Session, row: ModelVersion) -> dict[str, Any]:
    assignments = session.scalars(select(ModelAssignment).where(
        ModelAssignment.family == row.family).order_by(ModelAssignment.id)).all()
    names = {vid: version for vid, version in session.execute(
        select(ModelVersion.id, ModelVersion.version).where(ModelVersion.family == row.family))}
    mine = [a for a in assignments if a.version_fk == row.id
            or (a.replaces_fk and any(b.id == a.replaces_fk and b.version_fk == row.id
                                      for b in assignments))]
    validations = session.scalars(select(ModelValidation).where(
        ModelValidation.version_fk == row.id).order_by(ModelValidation.id.desc())).all()
    events = audit.query(session, resource_type="model_version",
                         resource_id=f"{row.family}@{row.version}", limit=1000)
    return {**version_summary(session, row), "config": row.config, "notes": row.notes,
            "manifest": row.manifest,
            "validations": [validation_dict(v) for v in validations],
            "assignments": [_assignment(a, names) for a in mine],
            "history": [audit.to_dict(e) for e in reversed(events)],
            "figures": figures.version_figures(session, row.family, row.version)}


def families_view(session: Session) -> dict[str, Any]:
    """Per family that has versions or assignments: what runs on every rule and on each rule
    (active and shadow), and the built-in default it falls back to."""
    rows = list_versions(session)
    names = {r.id: r.version for r in rows}
    current = [a for group in _open_by_version(session).values() for a in group]
    out: dict[str, Any] = {}
    for family in sorted({r.family for r in rows} | {a.family for a in current}):
        entry: dict[str, Any] = {"default": default_spec(family).version}
        for role in ("active", "shadow"):
            # the rule's own first, then every rule's, as ``open_assignments`` orders them
            mine = sorted((a for a in current if a.family == family and a.role == role),
                          key=lambda a: (a.rule == "", a.id))
            entry[role] = [{"rule": a.rule or "*", "version": names.get(a.version_fk)
                            if a.version_fk else "built-in default"} for a in mine]
        out[family] = entry
    return out
