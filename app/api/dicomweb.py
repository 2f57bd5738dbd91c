"""DICOMweb under ``/dicomweb`` (PS3.18): STOW-RS (10.5), QIDO-RS (10.6), WADO-RS (10.4).

Thin: parse the request, authorise (STOW needs ``pacs``; search and retrieval ``pacs`` or
``clinician``; ``admin`` passes everywhere), call ``app.dicom.stow`` / ``app.dicom.wado``,
write the audit event, serialise. Frames, rendered and thumbnail resources (PS3.18 10.4.1.1.3,
10.4.1.1.4) are ``app.dicom.wado`` over ``app.dicom.frames`` and ``app.dicom.render``. See
docs/dicomweb.md for the conformance notes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.from_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from app.api.deps import get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.config import get_settings
from app.db.session import session_factory
from app.dicom import frames, render, stow, wado
from app.dicom.multipart import content_type, new_boundary, write_parts
from app.dicom.query import QueryError
from app.security import audit
from app.security.keys import Principal

# PS3.18 10.5.3: 202 some stored; 400 and 409 nothing stored (a Store response naming each
# failure, or a problem for a body refused whole); 406, 413, 415 problems
STOW_RESPONSES = {**problems(400, 406, 409, 413, 415),
                  202: {"description": "Some instances stored, some refused"}}
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
WRITE = require("pacs")
READ = require("pacs", "clinician")
DICOM_JSON = "application/dicom+json"


def _base_url(request: Request) -> str:
    """The base of response URLs: MEDGATE_PUBLIC_URL; else what a trusted proxy forwarded;
    else the configured listen address. The request's own Host header is never used, so a
    client cannot make MedGate hand out URLs that point elsewhere."""
    s = get_settings()
    if s.public_url:
        return s.public_url.rstrip("/") + "/dicomweb"
    client = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded and client in s.trusted_proxies:
        proto = request.headers.get("x-forwarded-proto", "https").split(",")[0].strip()
        return f"{proto}://{forwarded.split(',')[0].strip()}/dicomweb"
    host = s.http_host if s.http_host not in ("0.0.0.0", "::", "") else socket.getfqdn()
    return f"http://{host}:{s.http_port}/dicomweb"


def _audit(session: Session, p: Principal, action: str, resource_type: str,
           resource_id: str = "", outcome: str = "success", **detail: object) -> None:
    audit.record(session, p.actor, action, resource_type, resource_id, outcome, detail or None)
    session.commit()


# -- STOW-RS ---------------------------------------------------------------------------------
# Chunks from the server are often 64 KiB or less; each trip from the worker thread to the event
# loop and back costs more than parsing them, so one trip brings up to this much of the body.
BODY_BLOCK = 256 * 1024


async def _next_chunks(stream) -> list[bytes]:  # noqa: ANN001 - Starlette's body stream
    """The next chunks of the body, about BODY_BLOCK bytes of them; [] once it has ended."""
    chunks: list[bytes] = []
    size = 0
    while size < BODY_BLOCK:
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            break
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
    return chunks


def _body_chunks(request: Request) -> Iterator[bytes]:
    """The request body as a blocking iterator, for the worker thread that spools it."""
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunks = anyio.from_thread.run(_next_chunks, stream)
            except ClientDisconnect as exc:
                raise stow.BodyError(400, "upload-interrupted",
                                     "the client went away before the body was complete; "
                                     "nothing was stored") from exc
            if not chunks:
                return
            while chunks:
                yield chunks.pop(0)  # handed on, not kept here
    finally:
        anyio.from_thread.run(stream.aclose)


def _receive_and_store(request: Request, study: str | None, limit: int) -> stow.StowResult:
    """Runs in a worker thread: the body is pulled from the event loop chunk by chunk."""
    chunks = _body_chunks(request)
    try:
        settings = get_settings()
        return stow.stow(session_factory(settings.db_url), chunks,
                         request.headers.get("content-type"), limit, _base_url(request), study,
                         max_parts=settings.max_parts_per_request)
    finally:
        chunks.close()


def _audit_stow(session: Session, p: Principal, result: stow.StowResult) -> None:
    for resource_type, resource_id, outcome, detail in result.audit_events():
        audit.record(session, p.actor, "dicomweb.store", resource_type, resource_id, outcome,
                     detail)
    session.commit()


async def _stow(request: Request, p: Principal, session: Session,
                study: str | None) -> Response:
    session.commit()  # end the key lookup's read transaction before a long upload
    limit = get_settings().max_upload_bytes
    try:
        wado.check_accept_json(request.headers.get("accept"))
    except wado.NotAcceptable as exc:
        raise Problem(406, "not-acceptable", f"the Store response is {DICOM_JSON}") from exc
    try:
        stow.request_boundary(request.headers.get("content-type"))
        stow.check_declared_length(request.headers.get("content-length"), limit)
        result = await anyio.to_thread.run_sync(_receive_and_store, request, study, limit)
    except stow.BodyError as exc:
        reason = exc.detail
        await anyio.to_thread.run_sync(lambda: _audit(
            session, p, "dicomweb.store", "study", study or "", "failure", reason=reason))
        raise Problem(exc.status, exc.slug, exc.detail) from exc
    await anyio.to_thread.run_sync(_audit_stow, session, p, result)
    return JSONResponse(result.body, status_code=result.status, media_type=DICOM_JSON)


@router.post("/studies", responses=STOW_RESPONSES)
async def store_instances(request: Request, p: Principal = Depends(WRITE),
                          session: Session = Depends(get_session)) -> Response:
    """STOW-RS: store the Part 10 instances of a multipart/related body."""
    return await _stow(request, p, session, None)


@router.post("/studies/{study}", responses=STOW_RESPONSES)
async def store_study_instances(study: str, request: Request, p: Principal = Depends(WRITE),
                                session: Session = Depends(get_session)) -> Response:
    """STOW-RS to one study: instances of another study fail with 0xA900."""
    return await _stow(request, p, session, study)


# -- QIDO-RS ---------------------------------------------------------------------------------
def _search(request: Request, p: Principal, session: Session, level: str,
            study: str | None = None, series: str | None = None) -> Response:
    try:
        wado.check_accept_json(request.headers.get("accept"))
        req = wado.parse_search(level, list(request.query_params.multi_items()), study, series)
        results, more = wado.run_search(session, req, _base_url(request))
    except wado.NotAcceptable as exc:
        raise Problem(406, "not-acceptable", str(exc)) from exc
    except QueryError as exc:
        raise Problem(400, "bad-query", str(exc)) from exc
    _audit(session, p, "dicomweb.search", level.lower(), study or "",
           query=str(request.query_params), results=len(results))
    warnings = list(req.warnings)
    if more:
        warnings.append(f'299 MedGate "The number of results exceeded the maximum of '
                        f'{req.limit} supported by the server; additional results can be '
                        f'requested with offset={req.query.offset + req.limit}"')
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    # PS3.18 10.6.3: no match is 200 with an empty array (MedGate's choice over 204).
    return JSONResponse(results, media_type=DICOM_JSON, headers=headers)


@router.get("/studies", responses=problems(400, 406))
def search_studies(request: Request, p: Principal = Depends(READ),
                   session: Session = Depends(get_session)) -> Response:
    return _search(request, p, session, "STUDY")


@router.get("/series", responses=problems(400, 406))
def search_all_series(request: Request, p: Principal = Depends(READ),
                      session: Session = Depends(get_session)) -> Response:
    return _search(request, p, session, "SERIES")


@router.get("/instances", responses=problems(400, 406))
def search_all_instances(request: Request, p: Principal = Depends(READ),
                         session: Session = Depends(get_session)) -> Response:
    return _search(request, p, session, "INSTANCE")


@router.get("/studies/{study}/series", responses=problems(400, 406))
def search_series(study: str, request: Request, p: Principal = Depends(READ),
                  session: Session = Depends(get_session)) -> Response:
    return _search(request, p, session, "SERIES", study)


@router.get("/studies/{study}/instances", responses=problems(400, 406))
def search_study_instances(study: str, request: Request, p: Principal = Depends(READ),
                           session: Session = Depends(get_session)) -> Response:
    return _search(request, p, session, "INSTANCE", study)


@router.get("/studies/{study}/series/{series}/instances", responses=problems(400, 406))
def search_series_instances(study: str, series: str, request: Request,
                            p: Principal = Depends(READ),
                            session: Session = Depends(get_session)) -> Response:
    return _search(request, p, session, "INSTANCE", study, series)


# -- WADO-RS ---------------------------------------------------------------------------------
def _refs(session: Session, p: Principal, action: str, study: str, series: str | None,
          sop: str | None) -> list[wado.InstanceRef]:
    try:
        return wado.find_instances(session, study, series, sop)
    except wado.NotFound as exc:
        _audit(session, p, action, *_resource(study, series, sop), "not-found")
        raise Problem(404, "not-found", str(exc)) from exc


def _resource(study: str, series: str | None, sop: str | None) -> tuple[str, str]:
    return ("instance", sop) if sop else ("series", series) if series else ("study", study)


def _retrieve(request: Request, p: Principal, session: Session, study: str,
              series: str | None = None, sop: str | None = None) -> Response:
    refs = _refs(session, p, "dicomweb.retrieve", study, series, sop)
    try:
        wado.check_accept_dicom(request.headers.get("accept"),
                                {r.transfer_syntax_uid for r in refs})
    except wado.NotAcceptable as exc:
        raise Problem(406, "not-acceptable", str(exc)) from exc
    _audit(session, p, "dicomweb.retrieve", *_resource(study, series, sop),
           instances=len(refs))
    boundary = new_boundary()
    return StreamingResponse(wado.multipart_instances(refs, boundary),
                             media_type=content_type(boundary))


def _metadata(request: Request, p: Principal, session: Session, study: str,
              series: str | None = None, sop: str | None = None) -> Response:
    try:
        wado.check_accept_json(request.headers.get("accept"))
    except wado.NotAcceptable as exc:
        raise Problem(406, "not-acceptable", str(exc)) from exc
    refs = _refs(session, p, "dicomweb.metadata", study, series, sop)
    _audit(session, p, "dicomweb.metadata", *_resource(study, series, sop),
           instances=len(refs))
    return StreamingResponse(wado.metadata_json(refs, _base_url(request)),
                             media_type=DICOM_JSON)


@router.get("/studies/{study}", responses=problems(406))
def retrieve_study(study: str, request: Request, p: Principal = Depends(READ),
                   session: Session = Depends(get_session)) -> Response:
    return _retrieve(request, p, session, study)


@router.get("/studies/{study}/series/{series}", responses=problems(406))
def retrieve_series(study: str, series: str, request: Request, p: Principal = Depends(READ),
                    session: Session = Depends(get_session)) -> Response:
    return _retrieve(request, p, session, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}", responses=problems(406))
def retrieve_instance(study: str, series: str, sop: str, request: Request,
                      p: Principal = Depends(READ),
                      session: Session = Depends(get_session)) -> Response:
    return _retrieve(request, p, session, study, series, sop)


@router.get("/studies/{study}/metadata", responses=problems(406))
def study_metadata(study: str, request: Request, p: Principal = Depends(READ),
                   session: Session = Depends(get_session)) -> Response:
    return _metadata(request, p, session, study)


@router.get("/studies/{study}/series/{series}/metadata", responses=problems(406))
def series_metadata(study: str, series: str, request: Request, p: Principal = Depends(READ),
                    session: Session = Depends(get_session)) -> Response:
    return _metadata(request, p, session, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata",
            responses=problems(406))
def instance_metadata(study: str, series: str, sop: str, request: Request,
                      p: Principal = Depends(READ),
                      session: Session = Depends(get_session)) -> Response:
    return _metadata(request, p, session, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag_path:path}",
            responses=problems(422))
def instance_bulkdata(study: str, series: str, sop: str, tag_path: str, request: Request,
                      p: Principal = Depends(READ),
                      session: Session = Depends(get_session)) -> Response:
    """The BulkDataURIs of /metadata (PS3.18 10.4.1.1.5)."""
    refs = _refs(session, p, "dicomweb.bulkdata", study, series, sop)
    try:
        bulk = wado.bulkdata(refs[0], tag_path)
    except wado.NotFound as exc:
        raise Problem(404, "not-found", str(exc)) from exc
    except wado.Unframeable as exc:
        raise Problem(422, "unframeable-pixel-data", str(exc)) from exc
    _audit(session, p, "dicomweb.bulkdata", "instance", sop, element=tag_path)
    boundary = new_boundary()
    return StreamingResponse(write_parts(bulk.parts, boundary),
                             media_type=content_type(boundary, bulk.media_type))


# -- frames, rendered, thumbnail (PS3.18 10.4.1.1.3, 10.4.1.1.4) ------------------------------
PIXEL_RESPONSES = problems(400, 406, 422)


@contextmanager
def _pixel_errors(session: Session, p: Principal, action: str, resource: tuple[str, str],
                  **detail: object) -> Iterator[None]:
    """Errors below to problems, each audited as a failure."""
    statuses = ((frames.FrameListError, 400, "bad-frame-list"),
                (render.RenderError, 400, "bad-rendering-parameter"),
                (frames.FrameNotFound, 404, "not-found"),
                (frames.NotAcceptableFrames, 406, "not-acceptable"),
                (wado.NotAcceptable, 406, "not-acceptable"),
                (frames.CannotDecode, 406, "not-acceptable"),
                (frames.Unframeable, 422, "unframeable-pixel-data"),
                (render.CannotRender, 422, "cannot-render"))
    try:
        yield
    except tuple(e for e, _, _ in statuses) as exc:
        status, slug = next((st, sl) for e, st, sl in statuses if isinstance(exc, e))
        _audit(session, p, action, *resource, "failure", reason=str(exc), **detail)
        raise Problem(status, slug, str(exc)) from exc


def _render_request(request: Request) -> wado.RenderRequest:
    return wado.parse_render(dict(request.query_params), request.headers.get("accept"))


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}",
            responses=PIXEL_RESPONSES)
def retrieve_frames(study: str, series: str, sop: str, frame_list: str, request: Request,
                    p: Principal = Depends(READ),
                    session: Session = Depends(get_session)) -> Response:
    """WADO-RS frames (PS3.18 10.4.1.1.4): one part per frame, as stored or native."""
    [ref] = _refs(session, p, "dicomweb.frames", study, series, sop)
    with _pixel_errors(session, p, "dicomweb.frames", ("instance", sop), frames=frame_list):
        parts = wado.frame_parts(ref, frame_list, request.headers.get("accept"),
                                 _base_url(request))
    _audit(session, p, "dicomweb.frames", "instance", sop, frames=frame_list)
    boundary = new_boundary()
    part_type = parts[0][0]["Content-Type"].split(";")[0]
    return Response(b"".join(write_parts(parts, boundary)),
                    media_type=content_type(boundary, part_type))


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames", responses=problems(400))
def retrieve_no_frames(study: str, series: str, sop: str,
                       p: Principal = Depends(READ)) -> Response:
    """``/frames`` or ``/frames/`` with no frame list is a bad request, not an unknown path."""
    raise Problem(400, "bad-frame-list", "the frame list is empty; ask for /frames/1 or "
                  "/frames/1,3,5 (PS3.18 10.4.1.1.4)")


def _rendered(request: Request, p: Principal, session: Session, study: str, series: str,
              sop: str | None, frame: str = "1", thumbnail: bool = False) -> Response:
    action = "dicomweb.thumbnail" if thumbnail else "dicomweb.rendered"
    refs = _refs(session, p, action, study, series, sop)
    resource = _resource(study, series, sop)
    with _pixel_errors(session, p, action, resource):
        req = _render_request(request)
        ref = wado.middle_instance(refs)
        picture = wado.rendered(ref, req, frame, thumbnail)
    _audit(session, p, action, *resource, instance=ref.sop_instance_uid, frame=frame)
    return Response(picture, media_type=req.media)


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered",
            responses=PIXEL_RESPONSES)
def instance_rendered(study: str, series: str, sop: str, request: Request,
                      p: Principal = Depends(READ),
                      session: Session = Depends(get_session)) -> Response:
    """The instance's first frame as JPEG or PNG (PS3.18 10.4.1.1.3)."""
    return _rendered(request, p, session, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
            responses=PIXEL_RESPONSES)
def frame_rendered(study: str, series: str, sop: str, frame: str, request: Request,
                   p: Principal = Depends(READ),
                   session: Session = Depends(get_session)) -> Response:
    return _rendered(request, p, session, study, series, sop, frame)


@router.get("/studies/{study}/series/{series}/rendered", responses=PIXEL_RESPONSES)
def series_rendered(study: str, series: str, request: Request, p: Principal = Depends(READ),
                    session: Session = Depends(get_session)) -> Response:
    """The series' middle instance (by InstanceNumber, then SOP Instance UID), rendered."""
    return _rendered(request, p, session, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail",
            responses=PIXEL_RESPONSES)
def instance_thumbnail(study: str, series: str, sop: str, request: Request,
                       p: Principal = Depends(READ),
                       session: Session = Depends(get_session)) -> Response:
    return _rendered(request, p, session, study, series, sop, thumbnail=True)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/thumbnail",
            responses=PIXEL_RESPONSES)
def frame_thumbnail(study: str, series: str, sop: str, frame: str, request: Request,
                    p: Principal = Depends(READ),
                    session: Session = Depends(get_session)) -> Response:
    return _rendered(request, p, session, study, series, sop, frame, thumbnail=True)


@router.get("/studies/{study}/series/{series}/thumbnail", responses=PIXEL_RESPONSES)
def series_thumbnail(study: str, series: str, request: Request, p: Principal = Depends(READ),
                     session: Session = Depends(get_session)) -> Response:
    return _rendered(request, p, session, study, series, None, thumbnail=True)


@router.get("/studies/{study}/thumbnail", responses=PIXEL_RESPONSES)
def study_thumbnail(study: str, request: Request, p: Principal = Depends(READ),
                    session: Session = Depends(get_session)) -> Response:
    """The middle instance of the study's first series that has pixel data, small."""
    refs = _refs(session, p, "dicomweb.thumbnail", study, None, None)
    with _pixel_errors(session, p, "dicomweb.thumbnail", ("study", study)):
        req = _render_request(request)
        ref, picture = wado.thumbnail(refs, req)
    _audit(session, p, "dicomweb.thumbnail", "study", study, instance=ref.sop_instance_uid)
    return Response(picture, media_type=req.media)
