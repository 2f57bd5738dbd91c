"""Reports: the worklist, one report with its evidence and versions, and the clinician's
actions (edit, sign, amend, correct, withdraw, cancel; adopt or dismiss a proposed AI draft).
Every write needs the ETag it was based on (``*`` only for a report with no version yet)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import Offset, RowId, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.config import get_settings
from app.db.models import Delivery, Job, Report, Study
from app.db.session import session_factory
from app.dicom.studies import timeline
from app.export import build, delivery, destinations, fhir
from app.export.delivery import EXPORTABLE
from app.reports import service
from app.reports.lifecycle import STATES, IllegalTransition
from app.security import audit
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])
# every write: 409 illegal transition (or a key without a person), 412 stale ETag, 428 no
# If-Match, 422 an edit or reason that cannot apply
ACTION_PROBLEMS = problems(409, 412, 428)
CLINICIAN = ("clinician",)


class EditBody(BaseModel):
    sections: dict[str, str]


class ActionBody(BaseModel):
    reason: str | None = None
    sections: dict[str, str] | None = None


def _load(session: Session, report_id: int, p: Principal, action: str) -> Report:
    report = session.get(Report, report_id)
    if report is None:
        audit.record(session, p.actor, action, "report", str(report_id), outcome="not_found")
        session.commit()
        raise Problem(404, "not-found", f"no report {report_id}")
    return report


def _body(session: Session, report: Report, response: Response,
          number: int | None = None) -> dict:
    study = session.get(Study, report.study_fk)
    body = service.report_dict(session, report, number, timeline=timeline(study))
    if "etag" in body and number is None:
        response.headers["ETag"] = body["etag"]
    return body


@router.get("")
def worklist(p: Principal = Depends(require(*CLINICIAN)),
             session: Session = Depends(get_session), state: list[str] | None = Query(
                 None, description="report states; 'failed' finds open reports whose latest "
                                   "analysis failed"),
             domain: str | None = None, patient_id: str | None = None,
             since: datetime | None = None, until: datetime | None = None,
             limit: int = Query(50, ge=1, le=500), offset: Offset = 0) -> dict:
    allowed = (*STATES, service.FAILED)
    bad = [s for s in state or [] if s not in allowed]
    if bad:
        raise Problem(422, "validation-error", f"unknown state(s) {bad}; states: {allowed}")
    items = service.worklist(session, states=state or [], domain=domain, patient_id=patient_id,
                             since=since, until=until, limit=limit, offset=offset)
    audit.record(session, p.actor, "report.list", "report", "", detail={"count": len(items)})
    session.commit()
    return {"reports": items, "limit": limit, "offset": offset}


@router.get("/{report_id}")
def get_report(report_id: RowId, response: Response, p: Principal = Depends(require(*CLINICIAN)),
               session: Session = Depends(get_session)) -> dict:
    report = _load(session, report_id, p, "report.read")
    audit.record(session, p.actor, "report.read", "report", str(report_id))
    session.commit()
    return _body(session, report, response)


@router.get("/{report_id}/versions/{number}")
def get_version(report_id: RowId, number: RowId, response: Response,
                p: Principal = Depends(require(*CLINICIAN)),
                session: Session = Depends(get_session)) -> dict:
    report = _load(session, report_id, p, "report.read")
    if not any(v.number == number for v in report.versions):
        raise Problem(404, "not-found", f"report {report_id} has no version {number}")
    audit.record(session, p.actor, "report.read", "report", str(report_id),
                 detail={"version": number})
    session.commit()
    return _body(session, report, response, number)


def _exported(session: Session, report: Report, number: int | None) -> int:
    number = number or report.current_version
    if not any(v.number == number for v in report.versions):
        raise Problem(404, "not-found", f"report {report.id} has no version {number}")
    state = next(v.state for v in report.versions if v.number == number)
    if state not in EXPORTABLE:
        raise Problem(409, "not-exportable", f"version {number} is {state}: nothing to export "
                                             "(drafts, edits and signed versions are)")
    return number


@router.get("/{report_id}/sr", responses={200: {"content": {"application/dicom": {}}},
                                          **problems(409)})
def get_sr(report_id: RowId, version: RowId | None = None,
           p: Principal = Depends(require(*CLINICIAN)),
           session: Session = Depends(get_session)) -> FileResponse:
    """The version's DICOM SR (TID 1500), as stored in the study and delivered."""
    report = _load(session, report_id, p, "report.sr")
    number = _exported(session, report, version)
    audit.record(session, p.actor, "report.sr", "report", str(report_id),
                 detail={"version": number})
    session.commit()
    path = build.stored_sr(session_factory(get_settings().db_url), report_id, number)
    return FileResponse(path, media_type="application/dicom",
                        filename=f"report-{report_id}-v{number}.dcm")


@router.get("/{report_id}/fhir", responses={200: {"content": {"application/fhir+json": {}}},
                                            **problems(409)})
def get_fhir(report_id: RowId, version: RowId | None = None,
             p: Principal = Depends(require(*CLINICIAN)),
             session: Session = Depends(get_session)) -> JSONResponse:
    """The version as a FHIR R4 Bundle: DiagnosticReport, Observations, ImagingStudy."""
    report = _load(session, report_id, p, "report.fhir")
    number = _exported(session, report, version)
    v = next(v for v in report.versions if v.number == number)
    bundle = fhir.diagnostic_report(build.document_of(session, report, v))
    audit.record(session, p.actor, "report.fhir", "report", str(report_id),
                 detail={"version": number})
    session.commit()
    return JSONResponse(bundle, media_type="application/fhir+json")


@router.get("/{report_id}/deliveries")
def get_deliveries(report_id: RowId, p: Principal = Depends(require(*CLINICIAN)),
                   session: Session = Depends(get_session)) -> dict:
    """Each delivery of the report's versions: destination, state, attempts, last error."""
    _load(session, report_id, p, "report.deliveries")
    rows = session.scalars(select(Delivery).where(Delivery.report_fk == report_id)
                           .order_by(Delivery.id)).all()
    jobs = {j.id: j for j in session.scalars(select(Job).where(
        Job.id.in_([r.job_fk for r in rows if r.job_fk])))}
    return {"report": report_id,
            "deliveries": [delivery.delivery_dict(r, jobs.get(r.job_fk)) for r in rows]}


class ResendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destination: str
    version: RowId | None = None


@router.post("/{report_id}/deliveries", status_code=202, responses=problems(409))
def resend(report_id: RowId, body: ResendBody, p: Principal = Depends(require("admin")),
           session: Session = Depends(get_session)) -> dict:
    """Send a version (the current one unless named) to a destination again."""
    report = _load(session, report_id, p, "report.resend")
    number = _exported(session, report, body.version)
    try:
        dest = destinations.get(session, body.destination)
    except destinations.DestinationError as exc:
        raise Problem(404, "not-found", str(exc)) from exc
    v = next(v for v in report.versions if v.number == number)
    (made,) = delivery.enqueue(session, report, v, only=dest)
    audit.record(session, p.actor, "report.resend", "report", str(report_id),
                 detail={"version": number, "destination": dest.name})
    session.commit()
    return delivery.delivery_dict(made, session.get(Job, made.job_fk))


def _act(session: Session, report_id: int, p: Principal, action: str, if_match: str | None,
         response: Response, sections: dict[str, str] | None = None,
         reason: str | None = None) -> dict:
    report = _load(session, report_id, p, f"report.{action}")
    outcome, problem = "success", None
    if not if_match:
        outcome, problem = "refused", Problem(
            428, "precondition-required", "send the report's ETag in If-Match")
    else:
        try:
            service.apply(session, report, action, p.author, if_match, sections, reason,
                          person=p.person)
        except service.StaleETag as exc:
            outcome, problem = "stale", Problem(
                412, "precondition-failed", str(exc), current_etag=exc.current)
        except IllegalTransition as exc:
            outcome, problem = "conflict", Problem(
                409, "illegal-transition", str(exc), state=exc.state, allowed=exc.allowed)
        except service.ReportInputError as exc:
            outcome, problem = "invalid", Problem(422, "validation-error", str(exc))
        except service.SignerUnknown as exc:
            outcome, problem = "refused", Problem(409, "key-without-person", str(exc))
    if problem is not None:
        session.rollback()
        audit.record(session, p.actor, f"report.{action}", "report", str(report_id),
                     outcome=outcome)
        session.commit()
        raise problem
    audit.record(session, p.actor, f"report.{action}", "report", str(report_id),
                 detail={"version": report.current_version, "state": report.state})
    try:
        session.commit()
    except IntegrityError:
        # another writer with the same ETag committed its version number first
        session.rollback()
        audit.record(session, p.actor, f"report.{action}", "report", str(report_id),
                     outcome="stale")
        session.commit()
        raise Problem(412, "precondition-failed", "the report changed while this was written; "
                      "fetch it again") from None
    if action in ("sign", "amend", "correct"):
        _index_case(report)
    return _body(session, report, response)


def _index_case(report: Report) -> None:
    """Signed reports join the domain's case index for retrieval of similar cases. Embedding
    takes a moment (the model loads once per process), so it runs beside the request."""
    import logging
    import threading

    from app.rag.cases import add_case

    text = " ".join(t for t in service.current(report).sections.values() if t)
    domain, report_id = report.domain, str(report.id)

    def run() -> None:
        try:
            add_case(domain, report_id, text)
        except Exception:  # noqa: BLE001 - the signature stands even if indexing fails
            logging.getLogger("medgate.reports").exception("case index update failed")

    if text.strip():
        threading.Thread(target=run, name=f"case-index-{report_id}", daemon=True).start()


@router.patch("/{report_id}", responses=ACTION_PROBLEMS)
def edit(report_id: RowId, body: EditBody, response: Response,
         if_match: str | None = Header(None), p: Principal = Depends(require(*CLINICIAN)),
         session: Session = Depends(get_session)) -> dict:
    return _act(session, report_id, p, "edit", if_match, response, sections=body.sections)


def _action_route(action: str):  # noqa: ANN202 - a route handler
    def handler(report_id: RowId, response: Response, body: ActionBody | None = None,
                if_match: str | None = Header(None),
                p: Principal = Depends(require(*CLINICIAN)),
                session: Session = Depends(get_session)) -> dict:
        body = body or ActionBody()
        return _act(session, report_id, p, action, if_match, response, body.sections,
                    body.reason)

    handler.__name__ = action
    return handler


# cancel: the study is not to be reported (wrong patient, duplicate order) before signing;
# withdraw: the report was entered in error, also after signing;
# adopt / dismiss: a proposed AI draft (new images since the clinician's edit) becomes the
# current text (state draft), or is set aside and the clinician's text stays (state edited).
for _action in ("sign", "amend", "correct", "withdraw", "cancel", "adopt", "dismiss"):
    router.add_api_route(f"/{{report_id}}/{_action}", _action_route(_action), methods=["POST"],
                         name=f"report_{_action}", responses=ACTION_PROBLEMS)
