"""Dependencies shared by the routers: the database session and the authorised principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from app.api.problems import Problem
from app.config import get_settings
from app.db.models import MAX_INT
from app.db.session import session_factory
from app.security.keys import Principal, allowed, authenticate

# Row ids, version numbers and offsets as the database can hold them: anything larger is a 422
# naming the limit, never an overflow in the driver.
RowId = Annotated[int, Path(ge=1, le=MAX_INT, description="a row id")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT)]


def get_session() -> Iterator[Session]:
    session = session_factory(get_settings().db_url)()
    try:
        yield session
    finally:
        session.close()


def _principal(request: Request, session: Session) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                      headers={"WWW-Authenticate": 'Bearer realm="medgate"'})
    principal = authenticate(session, token.strip())
    if principal is None:
        raise Problem(401, "unauthorized", "the API key is unknown or revoked",
                      headers={"WWW-Authenticate": 'Bearer realm="medgate", error="invalid_token"'})
    return principal


def require(*roles: str):  # noqa: ANN201 - returns a FastAPI dependency
    """A dependency that lets through keys with one of ``roles`` (admin always passes)."""

    def dep(request: Request, session: Session = Depends(get_session)) -> Principal:
        principal = _principal(request, session)
        if not allowed(principal.role, roles):
            raise Problem(403, "forbidden",
                          f"role {principal.role!r} may not do this; needs one of {list(roles)}")
        request.state.principal = principal
        return principal

    return dep


PACS = ("pacs",)
CLINICIAN = ("clinician",)
ADMIN = ("admin",)
