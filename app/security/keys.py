"""API keys: random, shown once, stored as a SHA-256 hash.

A key is ``mg_<prefix>_<secret>``. The prefix finds the row; the secret (32 random bytes) is only
ever stored hashed. A fast hash is enough because the secret has 256 bits of entropy: there is
nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, utcnow
from app.security import audit

ROLES = ("pacs", "clinician", "admin")


class ApiKeyError(ValueError):
    """A key request that cannot be honoured (unknown role, unknown id)."""


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, role: str, name: str, actor: str = "cli") -> tuple[ApiKey, str]:
    if role not in ROLES:
        raise ApiKeyError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not name.strip():
        raise ApiKeyError("a key needs a name")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(name=name.strip(), role=role, prefix=prefix, key_hash=_hash(secret))
    session.add(row)
    session.flush()
    audit.record(session, actor, "key.create", "api_key", str(row.id),
                 detail={"role": role, "name": row.name})
    return row, f"mg_{prefix}_{secret}"


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int, actor: str = "cli") -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise ApiKeyError(f"no API key with id {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    audit.record(session, actor, "key.revoke", "api_key", str(key_id))
    return row


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
    return Principal(key_id=row.id, name=row.name, role=row.role)


def allowed(role: str, required: tuple[str, ...]) -> bool:
    """admin may do everything; other roles only what names them."""
    return role == "admin" or role in required
