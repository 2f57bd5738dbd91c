"""ECG upload: a WFDB record from an ECG cart, converted to DICOM and ingested."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import require
from app.api.openapi import problems
from app.api.problems import Problem
from app.config import get_settings
from app.db.session import session_factory
from app.dicom.ecg_upload import EcgUploadError, convert_and_store
from app.dicom.store import StoreError
from app.security import audit
from app.security.keys import Principal

router = APIRouter(prefix="/api/v1", tags=["ecg"])


def _chunks(upload: UploadFile):  # noqa: ANN202 - a generator of bytes
    while chunk := upload.file.read(1 << 20):
        yield chunk


@router.post("/ecg", status_code=201, responses=problems(409, 413))
async def upload_ecg(header: UploadFile = File(..., description="the WFDB .hea file"),
                     signal: list[UploadFile] = File(
                         ..., description="the signal file(s) the header names (.dat, .mat)"),
                     patient_id: str = Form(""), patient_name: str = Form(""),
                     accession_number: str = Form(""), study_description: str = Form(""),
                     p: Principal = Depends(require("pacs", "clinician"))) -> dict:
    factory = session_factory(get_settings().db_url)
    head = await header.read()
    try:
        done = await run_in_threadpool(
            convert_and_store, factory, head,
            {(f.filename or "").rsplit("/", 1)[-1]: _chunks(f) for f in signal},
            source=f"ecg-upload:{p.actor}",
            patient_id=patient_id, patient_name=patient_name,
            accession_number=accession_number, study_description=study_description)
    except EcgUploadError as exc:
        _audit(factory, p, "", "invalid")
        raise Problem(422, "invalid-ecg-record", str(exc)) from exc
    except StoreError as exc:
        _audit(factory, p, "", "refused")
        raise Problem(409 if exc.status == 0x0111 else 422, "store-refused",
                      f"{exc.reason} (status 0x{exc.status:04X})") from exc
    s = done.stored
    _audit(factory, p, s.study_uid, "success")
    return {"study_uid": s.study_uid, "series_uid": s.series_uid,
            "sop_instance_uid": s.sop_instance_uid, "sop_class_uid": done.sop_class_uid,
            "leads": done.leads, "duration_s": done.duration_s, "notes": done.notes,
            "created": s.created}


def _audit(factory, p: Principal, study_uid: str, outcome: str) -> None:  # noqa: ANN001
    with factory() as session:
        audit.record(session, p.actor, "ecg.upload", "study", study_uid, outcome=outcome)
        session.commit()
