"""Interactive questions: a clinician points at an instance (a point, a box or a drawn mask)
and asks; one family answers on the job machinery, so an ask is claimed, heart-beating,
retried and never lost exactly like an analysis job.

An ask is checked completely before anything is written: the instance belongs to the study
and is an image, the frame exists, the point or box lies inside the image, a mask is a PNG of
the image's size. Then one transaction adds the Job (kind ``ask``) and the Ask row and, after
it commits, the job is sent to the domain's queue. The drawn mask is written before that
commit and removed again when the transaction fails, so no file outlives a refused ask.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Ask, Instance, Job, Series, Study, utcnow
from app.dicom.headers import read_header
from app.pipeline import jobs, routes_store
from app.pipeline.families import known_families
from app.pipeline.grouping import provisional_domain
from app.registry.versions import resolve
from app.timeline import add_event
from models.base import ContractError, EngineResult, Prompt
from models.masks import write_mask

# The families that answer a question about an image, and the domains each reads. MedPLIB is
# the one that takes a point or a drawn mask and returns a mask; MedRegA answers about a box
# (region-to-text) and locates what a question names (grounding); Libra answers about a chest
# radiograph as a whole.
ASK_FAMILIES: dict[str, tuple[str, ...]] = {
    "medplib": ("cxr", "ct", "pathology"),
    "medrega": ("cxr", "ct"),
    "libra": ("cxr",),
    "ct-quant": ("ct",),
}
# ... and what each can be pointed with
ASK_REGIONS: dict[str, tuple[str, ...]] = {
    "medplib": ("point", "box", "mask"),
    "medrega": ("box",),
    "libra": (),
    "ct-quant": ("box", "mask"),
}
# A question that asks for an outline wants a mask, which only MedPLIB draws.
_SEGMENT = re.compile(r"\b(segment\w*|mask|outline|delineat\w*|contour)\b|分割|勾画", re.I)
# A question about a CT region's numbers is measured, not generated.
_MEASURE = re.compile(r"\b(attenuation|hounsfield|hu|density|measure\w*|volume|area)\b|衰减|密度",
                      re.I)
MAX_MASK_BYTES = 16 * 1024 * 1024  # a binary PNG of a 4k x 4k image is far smaller
REFERENCE_NOTICE = "reference model: not for clinical use"
_FILES_KEY = "medgate_ask_files"


@event.listens_for(Session, "after_commit")
def _keep_files(session: Session) -> None:
    session.info.pop(_FILES_KEY, None)


@event.listens_for(Session, "after_rollback")
def _remove_files(session: Session) -> None:
    for folder in session.info.pop(_FILES_KEY, []):
        shutil.rmtree(folder, ignore_errors=True)


class AskRefused(Exception):
    """A request that cannot become an ask; ``status`` and ``slug`` make its problem."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail


@dataclass(frozen=True)
class AskRequest:
    instance_uid: str
    question: str
    language: str = "en"
    family: str | None = None
    frame: int | None = None
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    mask_png_base64: str | None = None


def choose_family(req: AskRequest, domain: str) -> str:
    """The request's family, else: a CT box or mask with a question about its numbers
    (attenuation, HU, volume, area) is measured by ct-quant; a point, a drawn mask or a
    question asking for an outline goes to MedPLIB; a box (region-to-text) or any other
    question to MedRegA where it reads the domain, else MedPLIB."""
    if req.family:
        return req.family
    if domain == "ct" and (req.box is not None or req.mask_png_base64 is not None) \
            and _MEASURE.search(req.question):
        return "ct-quant"
    if req.point is not None or req.mask_png_base64 is not None or _SEGMENT.search(req.question):
        return "medplib"
    return "medrega" if domain in ASK_FAMILIES["medrega"] else "medplib"


def _image_instance(session: Session, study: Study, uid: str) -> tuple[Instance, dict[str, Any]]:
    inst = session.scalar(select(Instance).join(Series, Instance.series_fk == Series.id)
                          .where(Instance.sop_instance_uid == uid, Series.study_fk == study.id,
                                 Series.derived.is_(False)))
    if inst is None:
        raise AskRefused(422, "instance-not-in-study",
                         f"instance {uid} is not an image of study {study.study_uid}")
    try:
        header = read_header(get_settings().store_dir / inst.path)
    except ValueError as exc:
        raise AskRefused(422, "instance-unreadable", f"instance {uid}: {exc}") from exc
    if not header.get("Rows") or not header.get("Columns"):
        raise AskRefused(422, "not-an-image", f"instance {uid} has no image (no Rows and "
                                              "Columns); ask about an image instance")
    return inst, header


def _check_geometry(req: AskRequest, width: int, height: int, frames: int) -> int | None:
    frame = req.frame
    if frame is not None and not 1 <= frame <= frames:
        raise AskRefused(422, "bad-frame", f"frame {frame} does not exist: the instance has "
                                           f"{frames} frame{'s' if frames != 1 else ''} "
                                           "(numbered from 1, PS3.3 C.7.6.6)")
    if frame is None and frames > 1:
        frame = 1
    size = f"the image is {width} x {height} pixels (x 0..{width - 1}, y 0..{height - 1})"
    if req.point is not None:
        x, y = req.point
        if not (0 <= x < width and 0 <= y < height):
            raise AskRefused(422, "coordinate-outside-image",
                             f"point ({x:g}, {y:g}) lies outside the image: {size}")
    if req.box is not None:
        x, y, w, h = req.box
        if w <= 0 or h <= 0:
            raise AskRefused(422, "coordinate-outside-image",
                             f"box ({x:g}, {y:g}, {w:g}, {h:g}) is empty: width and height "
                             "must be greater than 0")
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise AskRefused(422, "coordinate-outside-image",
                             f"box ({x:g}, {y:g}, {w:g}, {h:g}) reaches outside the image: "
                             f"{size}")
    return frame


def decode_mask(data: str, width: int, height: int) -> np.ndarray:
    """The drawn mask as a 0/1 uint8 array of the image's size, or AskRefused."""
    if len(data) > MAX_MASK_BYTES * 4 // 3 + 4:
        raise AskRefused(413, "mask-too-large", f"the mask is larger than "
                                                f"{MAX_MASK_BYTES // (1024 * 1024)} MiB")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AskRefused(422, "bad-mask", "mask must be a PNG image in base64") from exc
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise AskRefused(422, "bad-mask", "mask must be a PNG image (it does not start with "
                                          "the PNG signature)")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            # a PNG header can claim any size: check it before decoding a single pixel
            if img.size != (width, height):
                raise AskRefused(422, "mask-size", f"the mask is {img.size[0]} x {img.size[1]} "
                                                   f"pixels; the image is {width} x {height}")
            img.load()
            array = np.asarray(img.convert("L"))
    except AskRefused:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AskRefused(422, "bad-mask", f"the mask PNG cannot be read: {exc}") from exc
    mask = (array > 0).astype(np.uint8)
    if not mask.any():
        raise AskRefused(422, "mask-empty", "the mask marks no pixel; draw the region to ask "
                                            "about")
    return mask


def queue_for(session: Session, domain: str) -> str:
    for rule in routes_store.load(session):
        if rule.domain == domain:
            return rule.queue
    return domain


def create_ask(session: Session, study: Study, req: AskRequest, actor: str) -> Ask:
    """Check the request, then add its Job and Ask (committed by the caller; the job is sent
    after the commit). Raises AskRefused before anything is written."""
    if req.point is not None and req.box is not None or (
            req.mask_png_base64 is not None and (req.point is not None or req.box is not None)):
        raise AskRefused(422, "one-region", "point at one thing: a point, a box or a mask")
    inst, header = _image_instance(session, study, req.instance_uid)
    width, height = int(header["Columns"]), int(header["Rows"])
    frames = int(header.get("NumberOfFrames") or 1)
    frame = _check_geometry(req, width, height, frames)
    mask = (decode_mask(req.mask_png_base64, width, height)
            if req.mask_png_base64 is not None else None)
    modality = session.scalar(select(Series.modality).where(Series.id == inst.series_fk)) or ""
    domain = study.domain or provisional_domain({modality})
    if domain is None:
        raise AskRefused(422, "no-domain", f"study {study.study_uid} has no domain yet "
                                           f"(modality {modality or 'unknown'}); route it first")
    family = choose_family(req, domain)
    if family not in known_families():
        raise AskRefused(422, "unknown-engine", f"unknown engine family {family!r}")
    if family not in ASK_FAMILIES:
        raise AskRefused(422, "family-cannot-answer",
                         f"{family} does not answer questions; ask one of "
                         f"{sorted(ASK_FAMILIES)}")
    if domain not in ASK_FAMILIES[family]:
        raise AskRefused(422, "family-not-for-domain",
                         f"{family} does not read {domain} studies (it reads "
                         f"{', '.join(ASK_FAMILIES[family])})")
    pointed = ("point" if req.point is not None else "box" if req.box is not None
               else "mask" if mask is not None else None)
    if pointed is not None and pointed not in ASK_REGIONS[family]:
        able = [f for f, kinds in ASK_REGIONS.items() if pointed in kinds]
        raise AskRefused(422, "family-cannot-point",
                         f"{family} cannot be pointed with a {pointed}; ask "
                         f"{' or '.join(able)} about it")
    spec = resolve(session, family).spec
    trained = spec.variant != "reference"
    if not trained and not get_settings().allow_reference_answers:
        raise AskRefused(409, "no-trained-version",
                         f"{family} has no trained, active version: register and activate its "
                         f"weights (medgate models register/activate {family} ...); answers of "
                         "the untrained reference model are allowed only with "
                         "MEDGATE_ALLOW_REFERENCE_ANSWERS=true, for tests and demos")
    try:
        prompt = Prompt(question=req.question, language=req.language,
                        instance_uid=req.instance_uid, frame=frame, point=req.point,
                        box=req.box, mask_path="mask.png" if mask is not None else None)
    except ContractError as exc:
        raise AskRefused(422, "bad-question", str(exc)) from exc

    job = Job(study_fk=study.id, kind="ask", idempotency_key=uuid.uuid4().hex + "ask",
              domain=domain, pipeline=f"ask:{family}"[:64],
              engines=[{"family": family, "required": True}], rule="ask",
              queue=queue_for(session, domain), instance_uids=[req.instance_uid],
              state="queued", queued_at=utcnow())
    session.add(job)
    session.flush()
    ask = Ask(study_fk=study.id, job_fk=job.id, family=family, version=spec.version,
              trained=trained, instance_uid=req.instance_uid, frame=frame,
              prompt=prompt.to_dict(), asked_by=actor[:128])
    session.add(ask)
    session.flush()
    if mask is not None:
        folder = ask_dir(study.study_uid, ask.id)
        write_mask(folder, "mask", mask)
        session.info.setdefault(_FILES_KEY, []).append(folder)
    add_event(session, study.id, "ask", job=job.id, ask=ask.id, family=family)
    jobs.send_after_commit(session, job)
    return ask


def ask_dir(study_uid: str, ask_id: int) -> Path:
    return get_settings().asks_dir / study_uid / f"ask-{ask_id}"


def prompt_of(ask: Ask, study_uid: str) -> Prompt:
    """The ask's prompt with its mask file's absolute path."""
    data = dict(ask.prompt)
    if data.get("mask_path"):
        data["mask_path"] = str(ask_dir(study_uid, ask.id) / data["mask_path"])
    return Prompt.from_dict(data)


# ---------------------------------------------------------------------------- the answer

def answer_of(result: EngineResult, segs: dict[str, dict[str, str]],
              timings: dict[str, float], study_uid: str) -> dict[str, Any]:
    """What the Ask keeps of its engine's result: the text, the regions (boxes in pixels;
    mask files relative to the results folder; the SEG each mask was stored as)."""
    results_dir = get_settings().results_dir
    regions = []
    for r in result.regions:
        item: dict[str, Any] = {"id": r.id, "kind": r.kind, "label": r.label,
                                "instance_uid": r.instance_uid, "frame": r.frame}
        if r.box is not None:
            item["box"] = list(r.box)
        if r.mask_path:
            item["mask_file"] = str(Path(r.mask_path).resolve().relative_to(results_dir))
            item["shape"] = list(r.shape) if r.shape else None
        if r.id in segs:
            seg = segs[r.id]
            item["seg"] = {**seg, "url": f"/dicomweb/studies/{study_uid}/series/"
                                         f"{seg['series_uid']}/instances/"
                                         f"{seg['sop_instance_uid']}"}
        regions.append(item)
    return {"version": result.model.version, "trained": result.trained,
            "text": " ".join(s.text for t in result.text for s in t.sentences),
            "sections": [{"name": t.name, "sentences": [s.text for s in t.sentences]}
                         for t in result.text],
            "regions": regions,
            "findings": [f.to_dict() for f in result.findings],
            "warnings": list(result.warnings), "timings": timings}


def mask_file(ask: Ask, region_id: str) -> Path | None:
    for r in (ask.answer or {}).get("regions", []):
        if r.get("id") == region_id and r.get("mask_file"):
            return get_settings().results_dir / r["mask_file"]
    return None


# ---------------------------------------------------------------------------- reading an ask

def ask_dict(ask: Ask, job: Job | None, study_uid: str) -> dict[str, Any]:
    def t(v: Any) -> str | None:
        return v.isoformat() if v else None

    answer = ask.answer or {}
    body: dict[str, Any] = {
        "id": ask.id, "url": f"/api/v1/asks/{ask.id}", "study_uid": study_uid,
        "state": job.state if job is not None else ("done" if ask.answer else "failed"),
        "question": ask.prompt.get("question"), "language": ask.prompt.get("language"),
        "instance_uid": ask.instance_uid, "frame": ask.frame,
        "prompt": {k: v for k, v in ask.prompt.items() if k in ("point", "box")}
        | ({"mask": True} if ask.prompt.get("mask_path") else {}),
        "model": {"family": ask.family, "version": answer.get("version", ask.version),
                  "trained": answer.get("trained", ask.trained)},
        "asked_by": ask.asked_by, "created_at": t(ask.created_at),
        "error": job.error if job is not None and job.state == "failed" else None,
        "timings": answer.get("timings", {}),
    }
    if job is not None:
        body["job"] = {"id": job.id, "state": job.state, "attempts": job.attempts,
                       "queued_at": t(job.queued_at), "started_at": t(job.started_at),
                       "finished_at": t(job.finished_at)}
    if ask.answer is not None:
        regions = []
        for r in answer.get("regions", []):
            item = {k: v for k, v in r.items() if k not in ("mask_file", "shape")}
            if r.get("mask_file"):
                item["mask"] = {"url": f"/api/v1/asks/{ask.id}/masks/{r['id']}",
                                "media_type": "image/png", "shape": r.get("shape")}
            regions.append(item)
        body["answer"] = {"text": answer.get("text", ""), "sections": answer.get("sections", []),
                          "regions": regions,
                          "findings": answer.get("findings", []),
                          "warnings": answer.get("warnings", [])}
    if not body["model"]["trained"]:
        body["notice"] = REFERENCE_NOTICE
    return body
