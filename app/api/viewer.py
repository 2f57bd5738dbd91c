"""The OHIF viewer under ``/viewer``: its static files, the generated ``app-config.js``, the
sign-in page, and the single-page app's entry for every client route
(``/viewer/viewer?StudyInstanceUIDs=...``).

The viewer's code is public (MIT) and carries no patient data, so its files need no session;
the entry page sends a browser without a live session to sign in, and everything the viewer
reads (``/dicomweb``) is checked on its own.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.api.problems import Problem
from app.config import get_settings
from app.security import sessions
from app.viewer import ohif, pages

PREFIX = "/viewer"
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + PREFIX + "/"


def _package() -> ohif.Package:
    return ohif.Package(get_settings().ohif_dir)


@router.get("/app-config.js")
def app_config(request: Request) -> Response:
    return Response(ohif.app_config(_base(request), request.scope.get("root_path", "")),
                    media_type="text/javascript", headers={"Cache-Control": "no-cache"})


@router.get("/sign-in")
def sign_in_page(next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query name
    return HTMLResponse(pages.sign_in(next), headers={"Cache-Control": "no-store"})


def _entry(request: Request, package: ohif.Package, session: Session) -> Response:
    if not package.installed:
        return HTMLResponse(pages.not_installed(str(package.root)), status_code=503)
    token = request.cookies.get(sessions.COOKIE, "")
    if sessions.authenticate(session, token) is None:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{pages.SIGN_IN}?next={quote(here, safe='')}", status_code=303)
    index = package.dist / ohif.ENTRY
    body = ohif.served_bytes(index, _base(request)) or index.read_bytes()
    return Response(body, media_type=ohif.MEDIA_TYPES[".html"],
                    headers={"Cache-Control": "no-store"})


@router.get("")
@router.get("/{path:path}")
def viewer(request: Request, path: str = "", session: Session = Depends(get_session)
           ) -> Response:
    package = _package()
    file = package.file(path) if package.installed else None
    if file is None and package.installed and "." in path.rsplit("/", 1)[-1]:
        # a file the package lacks; client routes (viewer, segmentation, ...) have no suffix
        raise Problem(404, "not-found", f"the viewer has no file {path!r}")
    if file is None or file.name == ohif.ENTRY:
        return _entry(request, package, session)  # a client route of the single-page app
    rewritten = ohif.served_bytes(file, _base(request))
    if rewritten is None:
        return FileResponse(file, media_type=ohif.media_type(file))
    # the app bundle is 17 MB: a browser that has it asks again with If-None-Match
    tag = ohif.etag(file, _base(request))
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return Response(rewritten, media_type=ohif.media_type(file) or "text/plain", headers=headers)
