"""API keys: random, shown once, stored as a SHA-256 hash.

A key is ``mg_<prefix>_<secret>``. The prefix finds the row; the secret (32 random bytes) is only
ever stored hashed. A fast hash is enough because the secret has 256 bits of entropy: there is
nothing to brute-force that a slow hash would protect.

A key belongs to a person: the display name and an optional site identifier (staff number, GMC
or NPI number) given when it is issued. A clinician key must name its person, because edits and
signatures made with it record that person; a pacs or admin key may belong to a system. A
clinician key issued before people were recorded still authenticates, but cannot sign.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import ApiKey, WebSession, utcnow
from app.security import audit

ROLES = ("pacs", "clinician", "admin")
# Roles whose keys must name a person (a signature must name one).
PERSONAL_ROLES = ("clinician",)


class ApiKeyError(ValueError):
    """A key request that cannot be honoured (unknown role, unknown id)."""


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str
    person_name: str = ""
    person_id: str = ""

    @property
    def actor(self) -> str:
        """Who acted, for the audit log: always the key."""
        return f"key:{self.key_id}:{self.name}"

    @property
    def person(self) -> dict[str, Any] | None:
        """The person the key belongs to, as a version records them; None for none."""
        if not self.person_name:
            return None
        return {"name": self.person_name, "id": self.person_id, "key_id": self.key_id}

    @property
    def author(self) -> str:
        """The author a report version names: the person and their key, else the key."""
        if not self.person_name:
            return self.actor[:128]
        suffix = f" (key {self.key_id})"
        return self.person_name[: 128 - len(suffix)] + suffix


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, role: str, name: str, actor: str = "cli", *,
               person_name: str = "", person_id: str = "") -> tuple[ApiKey, str]:
    """A new key for ``role``; ``person_name`` (required for a clinician) and ``person_id``
    say whom it belongs to. Returns the row and the key, which is never stored in clear."""
    if role not in ROLES:
        raise ApiKeyError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not name.strip():
        raise ApiKeyError("a key needs a name")
    person_name, person_id = person_name.strip(), person_id.strip()
    if role in PERSONAL_ROLES and not person_name:
        raise ApiKeyError(f"a {role} key must name the person it belongs to (person_name, "
                          "--person): signatures made with it record that person")
    if len(person_name) > 100 or len(person_id) > 64:
        raise ApiKeyError("person_name is at most 100 characters, person_id at most 64")
    if person_id and not person_name:
        raise ApiKeyError("person_id needs person_name too")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(name=name.strip(), role=role, prefix=prefix, key_hash=_hash(secret),
                 person_name=person_name, person_id=person_id)
    session.add(row)
    session.flush()
    audit.record(session, actor, "key.create", "api_key", str(row.id),
                 detail={"role": role, "name": row.name, "person_name": person_name,
                         "person_id": person_id})
    return row, f"mg_{prefix}_{secret}"


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int, actor: str = "cli") -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise ApiKeyError(f"no API key with id {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    ended = _end_sessions(session, key_id, actor)
    audit.record(session, actor, "key.revoke", "api_key", str(key_id),
                 detail={"sessions_ended": ended} if ended else None)
    return row


def _end_sessions(session: Session, key_id: int, actor: str) -> int:
    """End the key's open browser sessions (app.security.sessions); a session also dies
    with its key when it is next used, this records when and why."""
    now = utcnow()
    ids = list(session.scalars(select(WebSession.id).where(
        WebSession.key_fk == key_id, WebSession.revoked_at.is_(None),
        WebSession.expires_at > now)))
    if ids:
        session.execute(update(WebSession).where(WebSession.id.in_(ids)).values(revoked_at=now))
        for sid in ids:
            audit.record(session, actor, "session.ended", "web_session", str(sid),
                         detail={"key_id": key_id, "reason": "key revoked"})
    return len(ids)


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal for a presented key, or None when it is unknown, malformed or revoked."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "mg":
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, _hash(parts[2])):
        return None
    return Principal(key_id=row.id, name=row.name, role=row.role,
                     person_name=row.person_name or "", person_id=row.person_id or "")


def allowed(role: str, required: tuple[str, ...]) -> bool:
    """admin may do everything; other roles only what names them."""
    return role == "admin" or role in required
