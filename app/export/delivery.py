"""Deliveries: a report version sent as DICOM SR to each destination that wants it.

A delivery is a Job of kind ``export`` (on the ``export`` queue) and a Delivery row, made in the
transaction that writes the report version, so the same machinery carries it as an analysis:
the message is sent after the commit, one worker claims it, beats its heart, retries transient
faults with backoff, and the sweeper re-sends a lost message or takes back a dead worker's job.

Faults are sorted as a PACS operator would:

- transient (retried): the association refused, aborted or timed out; a connection refused or
  reset; an HTTP 5xx or 429; a C-STORE status 0xA7xx (out of resources);
- permanent (failed at once, the status in the error): a C-STORE status 0xA9xx (data set does
  not match SOP class), 0xC000-0xCFFF (cannot understand) or 0x0122 (SOP class not supported);
  an HTTP 4xx other than 429; a STOW-RS response listing the instance as failed.

Warnings (0x0001, 0xB000-0xBFFF) are success: the instance was stored.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Delivery, Destination, Job, Report, ReportVersion, Study, utcnow
from app.pipeline import dispatch

log = logging.getLogger("medgate.export")

EXPORTABLE = ("draft", "edited", "final", "amended", "corrected")
EXPORT_QUEUE = "export"


class Transient(Exception):
    """Worth retrying: the destination may take it in a moment."""


class Permanent(Exception):
    """The destination refused it for good; retrying sends the same refusal."""


def wanted(dest: Destination, domain: str, state: str) -> bool:
    """Whether ``dest`` takes reports of ``domain`` in ``state`` (an empty list means all)."""
    return ((not dest.domains or domain in dest.domains)
            and (not dest.states or state in dest.states))


def enqueue(session: Session, report: Report, version: ReportVersion,
            only: Destination | None = None) -> list[Delivery]:
    """Deliveries of ``version`` to every destination that wants it (or to ``only``), in the
    caller's transaction; their messages go after its commit."""
    if version.state not in EXPORTABLE:
        return []
    dests = [only] if only is not None else session.scalars(
        select(Destination).order_by(Destination.id)).all()
    made = []
    for dest in dests:
        if only is None and not wanted(dest, report.domain, version.state):
            continue
        job = Job(study_fk=report.study_fk, kind="export", idempotency_key=uuid.uuid4().hex,
                  domain=report.domain, pipeline=f"export:{dest.name}"[:64], engines=[],
                  rule="export", queue=EXPORT_QUEUE, instance_uids=[], state="queued",
                  queued_at=utcnow())
        session.add(job)
        session.flush()
        delivery = Delivery(job_fk=job.id, report_fk=report.id, version=version.number,
                            destination_fk=dest.id, destination_name=dest.name)
        session.add(delivery)
        dispatch.send_after_commit(session, job.id, job.queue)
        made.append(delivery)
    return made


def delivery_dict(d: Delivery, job: Job | None) -> dict[str, Any]:
    def t(v: Any) -> str | None:
        return v.isoformat() if v else None

    return {"id": d.id, "report": d.report_fk, "version": d.version,
            "destination": d.destination_name, "state": job.state if job else "unknown",
            "attempts": job.attempts if job else 0, "last_error": job.error if job else None,
            "sop_instance_uid": d.sop_instance_uid, "status": d.status,
            "queued_at": t(job.queued_at) if job else None,
            "finished_at": t(job.finished_at) if job else None}


# ---------------------------------------------------------------------------- sending

def send_dimse(dest: Destination, path: Path, timeout: float = 30.0) -> str:
    """C-STORE one file (PS3.4 B.2.3); the status, or Transient / Permanent."""
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=dest.calling_ae or "MEDGATE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    try:
        assoc = ae.associate(dest.host, int(dest.port or 104), ae_title=dest.ae_title)
    except OSError as exc:
        raise Transient(f"cannot reach {dest.host}:{dest.port}: {exc}") from exc
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else \
            "not established"
        raise Transient(f"association with {dest.ae_title}@{dest.host}:{dest.port} {why}")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise Transient("no C-STORE response (timeout or aborted association)")
    code = int(status.Status)
    text = f"C-STORE status 0x{code:04X}"
    if code == 0x0000 or code == 0x0001 or 0xB000 <= code <= 0xBFFF:
        return text
    if 0xA700 <= code <= 0xA7FF:
        raise Transient(f"{text} (out of resources)")
    raise Permanent(f"{text} (refused)")


def send_stow(dest: Destination, path: Path, timeout: float = 30.0) -> str:
    """STOW-RS one file (PS3.18 10.5); the HTTP status, or Transient / Permanent."""
    import httpx

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    headers = {**(dest.headers or {}),
               "Content-Type": f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}",
               "Accept": "application/dicom+json"}
    try:
        r = httpx.post(dest.url.rstrip("/") + "/studies", content=body, headers=headers,
                       timeout=timeout)
    except httpx.HTTPError as exc:
        raise Transient(f"STOW-RS to {dest.url}: {type(exc).__name__}: {exc}") from exc
    text = f"HTTP {r.status_code}"
    if r.status_code in (200, 202):
        try:
            failed = (r.json() or {}).get("00081198")
        except ValueError:
            failed = None
        if failed and failed.get("Value"):
            raise Permanent(f"{text}: the instance is listed in FailedSOPSequence")
        return text
    if r.status_code == 429 or r.status_code >= 500:
        raise Transient(f"{text} from {dest.url}")
    raise Permanent(f"{text} from {dest.url}: {r.text[:200]}")


def send(dest: Destination, path: Path) -> str:
    return send_dimse(dest, path) if dest.kind == "dimse" else send_stow(dest, path)


def load(session: Session, job_id: int) -> tuple[Delivery, Destination, Report,
                                                  ReportVersion, Study]:
    d = session.scalar(select(Delivery).where(Delivery.job_fk == job_id))
    if d is None:
        raise Permanent(f"job {job_id} is a delivery that was deleted")
    dest = session.get(Destination, d.destination_fk) if d.destination_fk else None
    if dest is None:
        raise Permanent(f"destination {d.destination_name!r} was deleted")
    report = session.get(Report, d.report_fk)
    version = session.scalar(select(ReportVersion).where(
        ReportVersion.report_fk == d.report_fk, ReportVersion.number == d.version))
    study = session.get(Study, report.study_fk)
    return d, dest, report, version, study
