"""Administration of export destinations (DICOM AEs and STOW-RS URLs that receive reports).

Thin: validation and audit live in :mod:`app.export.destinations`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.api.deps import ADMIN, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.export import destinations
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1/admin/destinations", tags=["admin"])
_STATUS = {"invalid": (422, "invalid-destination"), "exists": (409, "destination-exists"),
           "not-found": (404, "not-found")}


class DestinationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    kind: str = Field(description="dimse or stow-rs")
    ae_title: str | None = Field(None, max_length=16)
    host: str | None = Field(None, max_length=255)
    port: int | None = None
    calling_ae: str | None = Field(None, max_length=16)
    url: str | None = Field(None, max_length=1024)
    headers: dict[str, str] | None = None
    domains: list[str] = Field(default_factory=list, max_length=8)
    states: list[str] = Field(default_factory=list, max_length=8)


class DestinationChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str | None = None
    ae_title: str | None = Field(None, max_length=16)
    host: str | None = Field(None, max_length=255)
    port: int | None = None
    calling_ae: str | None = Field(None, max_length=16)
    url: str | None = Field(None, max_length=1024)
    headers: dict[str, str] | None = None
    domains: list[str] | None = Field(None, max_length=8)
    states: list[str] | None = Field(None, max_length=8)


def _problem(exc: destinations.DestinationError) -> Problem:
    status, slug = _STATUS.get(exc.kind, (422, "invalid-destination"))
    return Problem(status, slug, str(exc))


@router.get("")
def destinations_list(p: Principal = Depends(require(*ADMIN)),
                      session: Session = Depends(get_session)) -> dict:
    return {"destinations": [destinations.to_dict(d) for d in destinations.list_all(session)]}


@router.post("", status_code=201, responses=problems(409))
def destinations_create(body: DestinationBody, response: Response,
                        p: Principal = Depends(require(*ADMIN)),
                        session: Session = Depends(get_session)) -> dict:
    try:
        row = destinations.create(session, p.actor, **body.model_dump())
    except destinations.DestinationError as exc:
        raise _problem(exc) from exc
    session.commit()
    response.headers["Location"] = f"{router.prefix}/{row.name}"
    return destinations.to_dict(row)


@router.get("/{name}")
def destinations_get(name: str, p: Principal = Depends(require(*ADMIN)),
                     session: Session = Depends(get_session)) -> dict:
    try:
        return destinations.to_dict(destinations.get(session, name))
    except destinations.DestinationError as exc:
        raise _problem(exc) from exc


@router.patch("/{name}")
def destinations_update(name: str, body: DestinationChange,
                        p: Principal = Depends(require(*ADMIN)),
                        session: Session = Depends(get_session)) -> dict:
    try:
        row = destinations.update(session, name, p.actor, **body.model_dump(exclude_unset=True))
    except destinations.DestinationError as exc:
        raise _problem(exc) from exc
    session.commit()
    return destinations.to_dict(row)


@router.delete("/{name}")
def destinations_delete(name: str, p: Principal = Depends(require(*ADMIN)),
                        session: Session = Depends(get_session)) -> dict:
    try:
        gone = destinations.delete(session, name, p.actor)
    except destinations.DestinationError as exc:
        raise _problem(exc) from exc
    session.commit()
    return gone
