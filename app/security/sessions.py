"""Browser sessions: a clinician signs in once with their API key and the viewer reads images
with a cookie instead of the key.

The cookie holds a random token (32 bytes); the database keeps only its SHA-256 hash, the key
it stands for, when it was made and when it ends. A session is as good as its key and no
better: it ends at its expiry, at sign-out, or when the key is revoked (checked on every use,
so a revocation takes effect at once). Only ``clinician`` and ``admin`` keys may sign in: a
``pacs`` key belongs to a system, not a person at a browser.

What a cookie may do is narrower than the key: reads only (GET/HEAD under ``/dicomweb`` and
``/api/v1``), decided in ``app.api.deps``. A browser sends cookies by itself, so a write by
cookie would be open to cross-site request forgery; a write needs the Bearer key.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, WebSession, utcnow
from app.security import audit
from app.security.keys import Principal, allowed

COOKIE = "medgate_session"
# Roles that may sign in at a browser.
BROWSER_ROLES = ("clinician",)
# Methods and path prefixes a session cookie is accepted for: reads, nothing else.
COOKIE_METHODS = ("GET", "HEAD")
COOKIE_PREFIXES = ("/dicomweb", "/api/v1")


class SessionRefused(Exception):
    """A sign-in that cannot be honoured; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def may_sign_in(principal: Principal) -> bool:
    return allowed(principal.role, BROWSER_ROLES)


def cookie_applies(method: str, path: str) -> bool:
    """Whether a session cookie may stand in for the key on this request."""
    return method.upper() in COOKIE_METHODS and any(
        path == p or path.startswith(p + "/") for p in COOKIE_PREFIXES)


def create(session: Session, principal: Principal, hours: float,
           client: str = "") -> tuple[WebSession, str]:
    """A new session for ``principal``; returns the row and the token for the cookie (never
    stored in clear). Refuses keys of roles that may not sign in."""
    if not may_sign_in(principal):
        raise SessionRefused(403, f"a {principal.role!r} key cannot sign in at a browser; "
                                  f"sign in with a clinician or admin key")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = WebSession(token_hash=_hash(token), key_fk=principal.key_id, created_at=now,
                     expires_at=now + timedelta(hours=hours))
    session.add(row)
    session.flush()
    audit.record(session, principal.actor, "session.created", "web_session", str(row.id),
                 detail={"key_id": principal.key_id, "expires_at": row.expires_at.isoformat(),
                         "client": client})
    return row, token


def authenticate(session: Session, token: str) -> tuple[Principal, WebSession] | None:
    """The principal and session for a cookie's token, or None when the token is unknown,
    expired or ended, or its key is revoked or no longer of a role that may sign in."""
    if not token or len(token) > 128:
        return None
    found = session.execute(select(WebSession, ApiKey).join(ApiKey, WebSession.key_fk == ApiKey.id)
                            .where(WebSession.token_hash == _hash(token))).first()
    if found is None:
        return None
    row, key = found
    if row.revoked_at is not None or row.expires_at <= utcnow() or key.revoked_at is not None:
        return None
    principal = Principal(key_id=key.id, name=key.name, role=key.role,
                          person_name=key.person_name or "", person_id=key.person_id or "")
    if not may_sign_in(principal):
        return None
    return principal, row


def end(session: Session, token: str, reason: str = "sign-out") -> WebSession | None:
    """End the session of ``token`` (sign-out); None when there is no open one."""
    found = authenticate(session, token)
    if found is None:
        return None
    principal, row = found
    row.revoked_at = utcnow()
    audit.record(session, principal.actor, "session.ended", "web_session", str(row.id),
                 detail={"key_id": principal.key_id, "reason": reason})
    return row

