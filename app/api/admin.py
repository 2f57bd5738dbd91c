"""Administration: API keys and the audit log."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.api.deps import ADMIN, Offset, RowId, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.pipeline import routes_store
from app.pipeline.routing import RuleError
from app.security import audit
from app.security.keys import ApiKeyError, Principal, create_key, list_keys, revoke_key

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class KeyCreate(BaseModel):
    role: str
    name: str
    # whom the key belongs to: required for a clinician key (signatures record the person)
    person_name: str = ""
    person_id: str = ""


def _key_dict(k) -> dict:  # noqa: ANN001
    return {"id": k.id, "name": k.name, "role": k.role, "prefix": k.prefix,
            "person_name": k.person_name, "person_id": k.person_id,
            "created_at": k.created_at.isoformat() if k.created_at else None,
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}


@router.get("/keys")
def keys_list(p: Principal = Depends(require(*ADMIN)),
              session: Session = Depends(get_session)) -> dict:
    return {"keys": [_key_dict(k) for k in list_keys(session)]}


@router.post("/keys", status_code=201, responses=problems(422))
def keys_create(body: KeyCreate, p: Principal = Depends(require(*ADMIN)),
                session: Session = Depends(get_session)) -> dict:
    try:
        row, key = create_key(session, body.role, body.name, actor=p.actor,
                              person_name=body.person_name, person_id=body.person_id)
    except ApiKeyError as exc:
        raise Problem(422, "invalid-key-request", str(exc)) from exc
    session.commit()
    return {**_key_dict(row), "key": key}


@router.delete("/keys/{key_id}")
def keys_revoke(key_id: RowId, p: Principal = Depends(require(*ADMIN)),
                session: Session = Depends(get_session)) -> dict:
    try:
        row = revoke_key(session, key_id, actor=p.actor)
    except ApiKeyError as exc:
        raise Problem(404, "not-found", str(exc)) from exc
    session.commit()
    return _key_dict(row)


@router.get("/audit")
def audit_list(p: Principal = Depends(require(*ADMIN)), session: Session = Depends(get_session),
               actor: str | None = None, action: str | None = None,
               resource_type: str | None = None, resource_id: str | None = None,
               outcome: str | None = None, since: datetime | None = None,
               until: datetime | None = None, limit: int = Query(100, ge=1, le=1000),
               offset: Offset = 0) -> dict:
    events = audit.query(session, actor=actor, action=action, resource_type=resource_type,
                         resource_id=resource_id, outcome=outcome, since=since, until=until,
                         limit=limit, offset=offset)
    return {"events": [audit.to_dict(e) for e in events], "limit": limit, "offset": offset}


@router.get("/routes")
def routes_get(p: Principal = Depends(require(*ADMIN)),
               session: Session = Depends(get_session)) -> dict:
    return {"rules": [r.to_dict() for r in routes_store.load(session)]}


@router.put("/routes")
def routes_put(body: dict, p: Principal = Depends(require(*ADMIN)),
               session: Session = Depends(get_session)) -> dict:
    """Replace the whole rule set; an invalid rule refuses the request and changes nothing."""
    items = body.get("rules")
    if not isinstance(items, list):
        raise Problem(422, "validation-error", 'send {"rules": [...]}')
    try:
        rules = routes_store.replace(session, items)
    except (RuleError, TypeError, ValueError) as exc:
        session.rollback()
        raise Problem(422, "invalid-rule", str(exc)) from exc
    audit.record(session, p.actor, "routes.replace", "route_rule", "",
                 detail={"names": [r.name for r in rules]})
    session.commit()
    return {"rules": [r.to_dict() for r in rules]}
