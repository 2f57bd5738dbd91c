"""Browser sign-in: an API key becomes a session cookie the viewer reads images with.

``POST /api/v1/session`` takes the key as ``Authorization: Bearer`` or as the sign-in page's
form field ``key``; ``DELETE /api/v1/session`` signs out. The rules (who may sign in, what a
cookie may do) live in ``app.security.sessions``; see docs/security.md, "Browser sessions".
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy.orm import Session

from app.api.deps import BEARER, _audit_refusal, bearer_token, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.config import get_settings
from app.security import sessions
from app.security.keys import Principal, authenticate
from app.viewer import pages

router = APIRouter(prefix="/api/v1/session", tags=["session"])
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
SIGN_IN_BODY = {"requestBody": {"required": False, "content": {
    "application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": {
            "key": {"type": "string", "description": "an API key, when no Bearer is sent"},
            "next": {"type": "string", "description": "a /viewer path to go to afterwards"}}}}}}}


async def _form(request: Request) -> dict[str, str] | None:
    """The sign-in page's form fields; None when the body is not a form."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPES):
        return None
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def secure_cookie(request: Request) -> bool:
    """Secure when the browser reaches MedGate over https: directly, through a trusted proxy,
    or as MEDGATE_PUBLIC_URL says."""
    s = get_settings()
    if (s.public_url or "").lower().startswith("https://") or request.url.scheme == "https":
        return True
    client = request.client.host if request.client else ""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return client in s.trusted_proxies and proto == "https"


def _refuse(request: Request, status: int, detail: str, form: dict[str, str] | None,
            actor: str = "anonymous", **extra: object) -> Response:
    refusal = Problem(status, "unauthorized" if status == 401 else "forbidden", detail,
                      headers={"WWW-Authenticate": 'Bearer realm="medgate"'}
                      if status == 401 else None)
    _audit_refusal(request, refusal, actor, via="session", **extra)
    if form is not None:  # the sign-in page: show it again with the reason
        return HTMLResponse(pages.sign_in(form.get("next"), detail), status_code=status)
    raise refusal


@router.post("", status_code=201, openapi_extra=SIGN_IN_BODY,
             responses={303: {"description": "Signed in from the form: on to `next`"},
                        **problems(401, 403)})
def sign_in(request: Request, form: dict[str, str] | None = Depends(_form),
            session: Session = Depends(get_session),
            _bearer: object = Security(BEARER)) -> Response:
    presented = bearer_token(request) or (form or {}).get("key", "").strip()
    if not presented:
        return _refuse(request, 401, "send an API key as 'Authorization: Bearer <key>' or as "
                                     "the form field 'key'", form)
    principal = authenticate(session, presented)
    if principal is None:
        return _refuse(request, 401, "the API key is unknown or revoked", form)
    client = request.client.host if request.client else ""
    try:
        row, cookie = sessions.create(session, principal, get_settings().session_hours,
                                      client=client)
    except sessions.SessionRefused as exc:
        return _refuse(request, exc.status, exc.detail, form, principal.actor,
                       role=principal.role, needs=list(sessions.BROWSER_ROLES))
    session.commit()
    body = {"session": row.id, "expires_at": row.expires_at.isoformat(),
            "key": {"id": principal.key_id, "name": principal.name, "role": principal.role},
            "person": principal.person}
    response: Response
    if form is not None:
        response = RedirectResponse(pages.safe_next(form.get("next")), status_code=303)
    else:
        response = JSONResponse(body, status_code=201)
    response.set_cookie(sessions.COOKIE, cookie, max_age=int(get_settings().session_hours * 3600),
                        path="/", httponly=True, samesite="strict",
                        secure=secure_cookie(request))
    return response


@router.get("")
def whoami(request: Request, p: Principal = Depends(require("clinician"))) -> dict:
    """Who the request acts as, and the session's expiry when a cookie carried it."""
    row = getattr(request.state, "web_session", None)
    return {"key": {"id": p.key_id, "name": p.name, "role": p.role}, "person": p.person,
            "via": "session" if row is not None else "bearer",
            "expires_at": row.expires_at.isoformat() if row is not None else None}


@router.delete("", status_code=204, responses={204: {"description": "Signed out"}})
def sign_out(request: Request, session: Session = Depends(get_session)) -> Response:
    """End this browser's session and drop its cookie. Needs no key: it can only end the
    session whose cookie comes with it (and SameSite=Strict keeps other sites from sending
    it)."""
    token = request.cookies.get(sessions.COOKIE)
    if token and sessions.end(session, token) is not None:
        session.commit()
    response = Response(status_code=204)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=secure_cookie(request))
    return response
