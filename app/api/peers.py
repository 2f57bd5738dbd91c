"""Administration of the known DICOM peers (who may associate with the SCP, and do what).

Thin: validation and audit live in :mod:`app.dicom.peers`. A change applies to the peer's next
association; running associations keep the rights they were accepted with.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, StrictBool
from sqlalchemy.orm import Session

from app.api.deps import ADMIN, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.dicom import peers
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1/admin/peers", tags=["admin"])

_STATUS = {"invalid": (422, "invalid-peer"), "exists": (409, "peer-exists"),
           "not-found": (404, "not-found")}


class PeerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str
    host: str = ""
    port: int | None = None
    can_store: StrictBool = False
    can_query: StrictBool = False
    can_retrieve: StrictBool = False
    description: str = ""


class PeerChange(BaseModel):
    """Only the fields sent change; ``"port": null`` clears the port, ``"host": ""`` (or null)
    means any address."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = None
    port: int | None = None
    can_store: StrictBool | None = None
    can_query: StrictBool | None = None
    can_retrieve: StrictBool | None = None
    description: str | None = None


def _problem(exc: peers.PeerError) -> Problem:
    status, slug = _STATUS.get(exc.kind, (422, "invalid-peer"))
    return Problem(status, slug, str(exc))


@router.get("")
def peers_list(p: Principal = Depends(require(*ADMIN)),
               session: Session = Depends(get_session)) -> dict:
    return {"peers": [peers.to_dict(row) for row in peers.list_peers(session)]}


@router.post("", status_code=201, responses=problems(409))
def peers_create(body: PeerCreate, response: Response, p: Principal = Depends(require(*ADMIN)),
                 session: Session = Depends(get_session)) -> dict:
    try:
        row = peers.create(session, body.ae_title, p.actor,
                           **body.model_dump(exclude={"ae_title"}))
    except peers.PeerError as exc:
        raise _problem(exc) from exc
    session.commit()
    response.headers["Location"] = f"{router.prefix}/{row.ae_title}"
    return peers.to_dict(row)


@router.get("/{ae_title:path}")
def peers_get(ae_title: str, p: Principal = Depends(require(*ADMIN)),
              session: Session = Depends(get_session)) -> dict:
    try:
        return peers.to_dict(peers.get(session, ae_title))
    except peers.PeerError as exc:
        raise _problem(exc) from exc


@router.patch("/{ae_title:path}", responses=problems(409))
def peers_update(ae_title: str, body: PeerChange, p: Principal = Depends(require(*ADMIN)),
                 session: Session = Depends(get_session)) -> dict:
    try:
        row = peers.update(session, ae_title, p.actor, **body.model_dump(exclude_unset=True))
    except peers.PeerError as exc:
        raise _problem(exc) from exc
    session.commit()
    return peers.to_dict(row)


@router.delete("/{ae_title:path}")
def peers_delete(ae_title: str, p: Principal = Depends(require(*ADMIN)),
                 session: Session = Depends(get_session)) -> dict:
    try:
        gone = peers.delete(session, ae_title, p.actor)
    except peers.PeerError as exc:
        raise _problem(exc) from exc
    session.commit()
    return gone
