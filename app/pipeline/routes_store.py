"""Routing rules as stored in the database (seeded with ``routing.DEFAULT_RULES`` by migration
0003) and edited by admins as one list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import RouteRuleRow, utcnow
from app.pipeline.families import known_families
from app.pipeline.routing import RouteRule, RuleError, rules_from_dicts


def load(session: Session) -> list[RouteRule]:
    rows = session.scalars(select(RouteRuleRow).order_by(RouteRuleRow.priority.desc(),
                                                         RouteRuleRow.id))
    return rules_from_dicts(r.definition for r in rows)


def replace(session: Session, items: list[dict[str, Any]]) -> list[RouteRule]:
    """Validate every rule first, then replace the whole set; invalid input changes nothing."""
    rules = rules_from_dicts(items)  # raises RuleError before anything is deleted
    known = set(known_families())
    for rule in rules:
        unknown = [f for f in rule.pipeline if f not in known]
        if unknown:
            raise RuleError(f"rule {rule.name!r}: pipeline names unknown engine "
                            f"famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: "
                            f"{sorted(known)}")
    session.execute(delete(RouteRuleRow))
    for r in rules:
        session.add(RouteRuleRow(name=r.name, priority=r.priority, definition=r.to_dict(),
                                 updated_at=utcnow()))
    session.flush()
    return rules
