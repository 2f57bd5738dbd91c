"""Interactive questions: ask a hosted family about a point, a box or a drawn mask on an
instance of a study; read the answer with its regions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as FPath
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import RowId, get_session, require
from app.api.openapi import problems
from app.api.problems import Problem
from app.db.models import Ask, Job, Study
from app.dicom import studies
from app.pipeline import asks
from app.security import audit
from app.security.keys import Principal

router = APIRouter(tags=["asks"])
Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance_uid: str = Field(min_length=1, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                              description="the image asked about; it must be in this study")
    question: str = Field(min_length=1, max_length=2000)
    language: str = Field("en", max_length=35, description="BCP 47, e.g. en, zh, zh-CN")
    family: str | None = Field(None, max_length=64, description=(
        "the family to ask; unset: medplib for a point, a mask or a request for an outline, "
        "medrega for a box or any other question (where it reads the domain)"))
    frame: int | None = Field(None, ge=1, description="frame of a multi-frame image, from 1")
    point: tuple[Coordinate, Coordinate] | None = Field(None, description="[x, y] in pixels")
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        None, description="[x, y, width, height] in pixels")
    mask: str | None = Field(None, description="a PNG of the image's size, base64; non-zero "
                                               "pixels are the region")


@router.post("/api/v1/studies/{study_uid}/ask", status_code=202,
             responses=problems(409, 413))
def ask(study_uid: str, body: AskBody, p: Principal = Depends(require("clinician")),
        session: Session = Depends(get_session)) -> JSONResponse:
    """Queue a question on the study's domain queue; 202 with the ask's URL."""
    study = studies.get(session, study_uid)
    if study is None:
        audit.record(session, p.actor, "study.ask", "study", study_uid, outcome="not_found")
        session.commit()
        raise Problem(404, "not-found", f"no study {study_uid}")
    req = asks.AskRequest(instance_uid=body.instance_uid, question=body.question,
                          language=body.language, family=body.family, frame=body.frame,
                          point=body.point, box=body.box, mask_png_base64=body.mask)
    try:
        row = asks.create_ask(session, study, req, actor=p.actor)
    except asks.AskRefused as exc:
        session.rollback()
        audit.record(session, p.actor, "study.ask", "study", study_uid, outcome="refused",
                     detail={"problem": exc.slug})
        session.commit()
        raise Problem(exc.status, exc.slug, exc.detail) from exc
    audit.record(session, p.actor, "study.ask", "study", study_uid,
                 detail={"ask": row.id, "family": row.family, "instance": row.instance_uid})
    session.commit()
    job = session.get(Job, row.job_fk)
    return JSONResponse(asks.ask_dict(row, job, study_uid), status_code=202,
                        headers={"Location": f"/api/v1/asks/{row.id}"})


def _ask_or_404(session: Session, ask_id: int, p: Principal, action: str
                ) -> tuple[Ask, str]:
    row = session.get(Ask, ask_id)
    if row is None:
        audit.record(session, p.actor, action, "ask", str(ask_id), outcome="not_found")
        session.commit()
        raise Problem(404, "not-found", f"no ask {ask_id}")
    study_uid = session.scalar(select(Study.study_uid).where(Study.id == row.study_fk))
    return row, study_uid


@router.get("/api/v1/asks/{ask_id}")
def get_ask(ask_id: RowId, p: Principal = Depends(require("clinician")),
            session: Session = Depends(get_session)) -> dict:
    """The ask's state, answer, regions (boxes in pixels, masks as links), model and times."""
    row, study_uid = _ask_or_404(session, ask_id, p, "ask.read")
    job = session.get(Job, row.job_fk) if row.job_fk else None
    audit.record(session, p.actor, "ask.read", "study", study_uid, detail={"ask": ask_id})
    session.commit()
    return asks.ask_dict(row, job, study_uid)


@router.get("/api/v1/asks/{ask_id}/masks/{region_id}",
            responses={200: {"content": {"image/png": {}}}})
def get_mask(ask_id: RowId, region_id: Annotated[str, FPath(max_length=64)],
             p: Principal = Depends(require("clinician")),
             session: Session = Depends(get_session)) -> FileResponse:
    """A mask of the answer as a PNG of the source image's size (0 outside, 1 inside)."""
    row, study_uid = _ask_or_404(session, ask_id, p, "ask.mask")
    path = asks.mask_file(row, region_id)
    if path is None or not path.is_file():
        raise Problem(404, "not-found", f"ask {ask_id} has no mask {region_id!r}")
    audit.record(session, p.actor, "ask.mask", "study", study_uid,
                 detail={"ask": ask_id, "region": region_id})
    session.commit()
    return FileResponse(path, media_type="image/png")


@router.get("/api/v1/studies/{study_uid}/asks")
def list_asks(study_uid: str, p: Principal = Depends(require("clinician")),
              session: Session = Depends(get_session)) -> dict:
    """The study's asks, newest first."""
    study = studies.get(session, study_uid)
    if study is None:
        raise Problem(404, "not-found", f"no study {study_uid}")
    rows = session.scalars(select(Ask).where(Ask.study_fk == study.id)
                           .order_by(Ask.id.desc())).all()
    jobs = {j.id: j for j in session.scalars(
        select(Job).where(Job.id.in_([r.job_fk for r in rows if r.job_fk])))}
    audit.record(session, p.actor, "ask.list", "study", study_uid, detail={"count": len(rows)})
    session.commit()
    return {"study_uid": study_uid,
            "asks": [asks.ask_dict(r, jobs.get(r.job_fk), study_uid) for r in rows]}
