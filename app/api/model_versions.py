"""Model versions for administrators: register, validate, shadow, activate (on every rule or
one), roll back, retire, and the detail view with history and figures. Every change is audited
with the acting key and the reason (``app.registry.lifecycle``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.api.deps import ADMIN, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.registry import lifecycle, views
from app.registry.versions import RegistryError, get_version, register
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1/admin/models", tags=["models"])


class Registration(BaseModel):
    family: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    variant: str = "checkpoint"
    # a file or a folder, relative to MEDGATE_MODEL_DIR
    weights_path: str | None = Field(None, max_length=512)
    config: dict[str, Any] = Field(default_factory=dict)
    notes: str = Field("", max_length=20000)


class Change(BaseModel):
    reason: str = Field("", max_length=2000)
    # one routing rule's name; empty: every rule that runs the family
    rule: str = Field("", max_length=64)


class Reason(BaseModel):
    reason: str = Field("", max_length=2000)


def _refused(exc: RegistryError) -> Problem:
    return Problem(exc.status, exc.code, str(exc))


@router.get("")
def models_list(p: Principal = Depends(require(*ADMIN)),
                session: Session = Depends(get_session)) -> dict:
    return {"versions": views.summaries(session),
            "families": views.families_view(session)}


@router.post("", status_code=201, responses=problems(409, 422))
def models_register(body: Registration, p: Principal = Depends(require(*ADMIN)),
                    session: Session = Depends(get_session)) -> dict:
    try:
        row = register(session, body.family, body.version, body.variant, body.weights_path,
                       body.config, actor=p.actor, notes=body.notes)
    except RegistryError as exc:
        session.rollback()
        raise _refused(exc) from exc
    session.commit()
    return views.version_detail(session, row)


@router.get("/{family}/{version}", responses=problems(404))
def models_get(family: str, version: str, p: Principal = Depends(require(*ADMIN)),
               session: Session = Depends(get_session)) -> dict:
    try:
        return views.version_detail(session, get_version(session, family, version))
    except RegistryError as exc:
        raise _refused(exc) from exc


@router.post("/{family}/{version}/validate", status_code=202, responses=problems(404, 409, 422))
def models_validate(family: str, version: str, p: Principal = Depends(require(*ADMIN)),
                    session: Session = Depends(get_session)) -> dict:
    """Queue a validation on the family's bundled study; a worker of the family's queue runs
    it. Poll the version (or the validation's job) for the outcome."""
    try:
        v = lifecycle.request_validation(session, family, version, p.actor)
    except RegistryError as exc:
        session.rollback()
        raise _refused(exc) from exc
    session.commit()
    return {**views.validation_dict(v), "url": f"/api/v1/admin/models/{family}/{version}"}


def _change(session: Session, family: str, version: str | None, do) -> dict:  # noqa: ANN001
    try:
        do()
    except RegistryError as exc:
        # the change is refused; a quarantine found on the way (weights that no longer match,
        # checked before anything else changes) is kept, with its own audit event
        if exc.code == "quarantined":
            session.commit()
        else:
            session.rollback()
        raise _refused(exc) from exc
    session.commit()
    if version is None:
        return {"families": views.families_view(session)}
    return views.version_detail(session, get_version(session, family, version))


@router.post("/{family}/{version}/shadow", responses=problems(404, 409, 422))
def models_shadow(family: str, version: str, body: Change,
                  p: Principal = Depends(require(*ADMIN)),
                  session: Session = Depends(get_session)) -> dict:
    """Run the version beside the active one on live studies; never drafts."""
    return _change(session, family, version, lambda: lifecycle.shadow(
        session, family, version, p.actor, body.reason, body.rule))


@router.post("/{family}/{version}/shadow/stop", responses=problems(404, 409, 422))
def models_shadow_stop(family: str, version: str, body: Reason,
                       p: Principal = Depends(require(*ADMIN)),
                       session: Session = Depends(get_session)) -> dict:
    return _change(session, family, version, lambda: lifecycle.stop_shadow(
        session, family, version, p.actor, body.reason))


@router.post("/{family}/{version}/activate", responses=problems(404, 409, 422))
def models_activate(family: str, version: str, body: Change,
                    p: Principal = Depends(require(*ADMIN)),
                    session: Session = Depends(get_session)) -> dict:
    return _change(session, family, version, lambda: lifecycle.activate(
        session, family, version, p.actor, body.reason, body.rule))


@router.post("/{family}/rollback", responses=problems(409, 422))
def models_rollback(family: str, body: Change, p: Principal = Depends(require(*ADMIN)),
                    session: Session = Depends(get_session)) -> dict:
    """Back to the previously active version (of every rule, or of ``rule``)."""
    return _change(session, family, None, lambda: lifecycle.rollback(
        session, family, p.actor, body.reason, body.rule))


@router.post("/{family}/{version}/retire", responses=problems(404, 409, 422))
def models_retire(family: str, version: str, body: Reason,
                  p: Principal = Depends(require(*ADMIN)),
                  session: Session = Depends(get_session)) -> dict:
    return _change(session, family, version, lambda: lifecycle.retire(
        session, family, version, p.actor, body.reason))
