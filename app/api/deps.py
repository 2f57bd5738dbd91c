"""Dependencies shared by the routers: the database session and the authorised principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session

from app.api.problems import Problem
from app.config import get_settings
from app.db.models import MAX_INT
from app.db.session import session_factory
from app.security import audit, sessions
from app.security.keys import Principal, allowed, authenticate

# Row ids, version numbers and offsets as the database can hold them: anything larger is a 422
# naming the limit, never an overflow in the driver.
RowId = Annotated[int, Path(ge=1, le=MAX_INT, description="a row id")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT)]
# Declares the scheme in the OpenAPI document (Swagger UI's Authorize button); the key itself
# is checked by _principal, which answers problem+json.
BEARER = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="An API key: `Authorization: Bearer mg_...`")


def get_session() -> Iterator[Session]:
    session = session_factory(get_settings().db_url)()
    try:
        yield session
    finally:
        session.close()


def bearer_token(request: Request) -> str:
    """The key of ``Authorization: Bearer <key>``; "" when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _principal(request: Request, session: Session) -> Principal:
    if not request.headers.get("authorization") and sessions.COOKIE in request.cookies:
        return _cookie_principal(request, session)
    token = bearer_token(request)
    if not token:
        raise Problem(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                      headers={"WWW-Authenticate": 'Bearer realm="medgate"'})
    principal = authenticate(session, token)
    if principal is None:
        raise Problem(401, "unauthorized", "the API key is unknown or revoked",
                      headers={"WWW-Authenticate": 'Bearer realm="medgate", error="invalid_token"'})
    return principal


def _cookie_principal(request: Request, session: Session) -> Principal:
    """The browser session's principal: a cookie stands in for the key on reads only (a
    cookie-borne write would be open to cross-site request forgery)."""
    challenge = {"WWW-Authenticate": 'Bearer realm="medgate"'}
    if not sessions.cookie_applies(request.method, request.url.path):
        raise Problem(401, "unauthorized",
                      f"a session cookie only allows reading (GET, HEAD under /dicomweb and "
                      f"/api/v1); {request.method} {request.url.path} needs the API key as "
                      f"'Authorization: Bearer <key>'", headers=challenge)
    found = sessions.authenticate(session, request.cookies[sessions.COOKIE])
    if found is None:
        raise Problem(401, "session-expired",
                      "the session has expired or was ended (sign-out, revoked key); sign in "
                      "again", headers=challenge)
    principal, row = found
    request.state.web_session = row
    return principal


def _audit_refusal(request: Request, refusal: Problem, actor: str, **extra: object) -> None:
    """An ``auth.refused`` event for a 401 or 403, in a session of its own (the request's is
    never committed). It names the actor, never the presented key."""
    detail = {"status": refusal.status, "method": request.method, "path": request.url.path,
              "client": request.client.host if request.client else "",
              "reason": refusal.detail, **extra}
    audit.record_alone(session_factory(get_settings().db_url), actor, "auth.refused", "http",
                       request.url.path[:128], "refused", detail)


def require(*roles: str):  # noqa: ANN201 - returns a FastAPI dependency
    """A dependency that lets through keys with one of ``roles`` (admin always passes)."""

    def dep(request: Request, session: Session = Depends(get_session),
            _bearer: object = Security(BEARER)) -> Principal:
        try:
            principal = _principal(request, session)
        except Problem as exc:
            _audit_refusal(request, exc, "anonymous")
            raise
        if not allowed(principal.role, roles):
            refusal = Problem(403, "forbidden",
                              f"role {principal.role!r} may not do this; needs one of "
                              f"{list(roles)}")
            _audit_refusal(request, refusal, principal.actor, role=principal.role,
                           needs=list(roles))
            raise refusal
        request.state.principal = principal
        return principal

    return dep


PACS = ("pacs",)
CLINICIAN = ("clinician",)
ADMIN = ("admin",)
