"""Audit events: who did what to which resource, and how it ended.

Events are added to the caller's session so they commit (or roll back) with the change they
describe; a read records an event in a session of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditEvent

log = logging.getLogger("medgate.audit")


def record(session: Session, actor: str, action: str, resource_type: str, resource_id: str = "",
           outcome: str = "success", detail: dict[str, Any] | None = None) -> AuditEvent:
    event = AuditEvent(actor=actor, action=action, resource_type=resource_type,
                       resource_id=resource_id, outcome=outcome, detail=detail or {})
    session.add(event)
    return event


def record_alone(session_factory: Callable[[], Session], actor: str, action: str,
                 resource_type: str, resource_id: str = "", outcome: str = "success",
                 detail: dict[str, Any] | None = None) -> None:
    """One event in a session of its own, for what has no transaction to join (a refused
    request, a DIMSE message). A failed write is logged, never raised: the answer to the
    client must not depend on the audit log."""
    try:
        with session_factory() as session:
            record(session, actor, action, resource_type, resource_id, outcome, detail)
            session.commit()
    except Exception:  # noqa: BLE001 - see above
        log.exception("audit event %s for %s could not be written", action, actor)


def query(session: Session, *, actor: str | None = None, action: str | None = None,
          resource_type: str | None = None, resource_id: str | None = None,
          outcome: str | None = None, since: datetime | None = None,
          until: datetime | None = None, limit: int = 100, offset: int = 0) -> list[AuditEvent]:
    stmt = select(AuditEvent)
    for col, val in ((AuditEvent.actor, actor), (AuditEvent.action, action),
                     (AuditEvent.resource_type, resource_type),
                     (AuditEvent.resource_id, resource_id), (AuditEvent.outcome, outcome)):
        if val is not None:
            stmt = stmt.where(col == val)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.at <= until)
    stmt = stmt.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def to_dict(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "at": e.at.isoformat() if e.at else None, "actor": e.actor,
            "action": e.action, "resource_type": e.resource_type, "resource_id": e.resource_id,
            "outcome": e.outcome, "detail": e.detail}
