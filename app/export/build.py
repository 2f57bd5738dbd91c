"""From the database to what the exporters read: a report version as a ``ReportDocument``, and
its DICOM SR stored in the study.

The SR of a version is made once and kept: it is stored through the one store path as a derived
instance of the study (so Q/R and WADO-RS return it beside the images, and every delivery of the
version sends the same bytes), under a SOP Instance UID derived from the report and version.
An amendment's SR names the SR of the version it replaces.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Instance, Report, ReportVersion, Series, Study
from app.export.document import (
    FindingItem,
    MeasurementItem,
    Person,
    RegionItem,
    ReportDocument,
    SourceInstance,
)

SIGNED = ("final", "amended", "corrected")
SR_SERIES_NUMBER = 9100


def sr_uid(report: Report, number: int) -> str:
    """The SOP Instance UID of a version's SR: one per report and version, wherever it goes."""
    return generate_uid(entropy_srcs=[f"medgate-sr:{report.study_fk}:{report.id}:{number}"])


def sr_series_uid(report: Report) -> str:
    return generate_uid(entropy_srcs=[f"medgate-sr-series:{report.study_fk}:{report.id}"])


def _person(value: Any) -> Person | None:
    if isinstance(value, dict) and value.get("name"):
        return Person(str(value["name"]), str(value.get("id") or ""))
    return None


def _tag(result: dict[str, Any]) -> str:
    m = result.get("model") or {}
    return f"{m.get('family')}@{m.get('version')}"


def _when(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def document_of(session: Session, report: Report, version: ReportVersion) -> ReportDocument:
    """A report version as the SR and FHIR writers read it: the text as it stands, and the
    findings, measurements and regions of the trained results it was drafted from."""
    study = session.get(Study, report.study_fk)
    store = get_settings().store_dir
    rows = session.execute(
        select(Instance, Series).join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == study.id, Series.derived.is_(False))
        .order_by(Series.id, Instance.instance_number, Instance.id)).all()
    sources = tuple(SourceInstance(i.sop_class_uid, i.sop_instance_uid, s.series_uid,
                                   store / i.path) for i, s in rows)
    content = version.content or {}
    if not content.get("results"):  # a person's version keeps the AI draft it started from
        older = session.scalars(select(ReportVersion).where(
            ReportVersion.report_fk == report.id, ReportVersion.number < version.number)
            .order_by(ReportVersion.number.desc())).all()
        content = next((v.content for v in older if v.content.get("results")), content)
    trained = [r for r in content.get("results") or [] if r.get("trained")]
    findings, measurements, regions = [], [], []
    for r in trained:
        tag = _tag(r)
        findings += [FindingItem(f["code"], f["label"], f["state"], tuple(f.get("evidence", [])),
                                 tuple(f.get("knowledge", [])), f.get("where") or {},
                                 f.get("criteria") or "", tag) for f in r.get("findings", [])]
        measurements += [MeasurementItem(m["id"], m["name"], float(m["value"]), m["unit"],
                                         m.get("code"), m.get("where") or {}, tag)
                         for m in r.get("measurements", [])]
        regions += [RegionItem(g["id"], g.get("kind", ""), g.get("instance_uid"), g.get("frame"),
                               tuple(g["box"]) if g.get("box") else None,
                               tuple(tuple(p) for p in g["polygon"]) if g.get("polygon")
                               else None, g.get("label", ""), g.get("seg"), tag)
                    for g in r.get("regions", []) if g.get("kind") in ("box", "polygon", "mask")]
    predecessor = None
    if version.state in ("amended", "corrected"):
        earlier = session.scalar(select(ReportVersion.number).where(
            ReportVersion.report_fk == report.id, ReportVersion.number < version.number,
            ReportVersion.state.in_(SIGNED)).order_by(ReportVersion.number.desc()).limit(1))
        if earlier is not None:
            predecessor = {"study_uid": study.study_uid, "series_uid": sr_series_uid(report),
                           "sop_instance_uid": sr_uid(report, earlier),
                           "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34"}
    signed = version.state in SIGNED
    return ReportDocument(
        report_id=report.id, version=version.number, state=version.state, domain=report.domain,
        study_uid=study.study_uid, accession_number=study.accession_number or "",
        sections=dict(version.sections or {}), created_at=_when(version.created_at),
        sources=sources, models=tuple(dict.fromkeys(_tag(r) for r in trained)),
        findings=tuple(findings), measurements=tuple(measurements), regions=tuple(regions),
        author=_person(version.content.get("by")),
        signed_by=_person(version.content.get("signed_by")) if signed else None,
        signed_at=_when(version.created_at) if signed else None, reason=version.reason,
        predecessor=predecessor, extra={"study_date": study.study_date or ""})


def stored_sr(factory, report_id: int, number: int) -> Path:  # noqa: ANN001
    """The file of a version's SR in the store, made and stored the first time it is asked
    for. Raises ``app.export.sr.SRError`` for a version that has nothing to export."""
    from app.dicom.store import StoreError, store_dataset
    from app.export.sr import build_sr

    with factory() as session:
        report = session.get(Report, report_id)
        version = session.scalar(select(ReportVersion).where(
            ReportVersion.report_fk == report_id, ReportVersion.number == number))
        uid = sr_uid(report, number)
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == uid))
        if row is not None:
            return get_settings().store_dir / row.path
        doc = document_of(session, report, version)
        series_uid = sr_series_uid(report)
    ds = build_sr(doc, series_uid=series_uid, instance_number=number)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    try:
        return store_dataset(factory, ds).path
    except StoreError:
        with factory() as session:  # made at the same moment by another worker
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == uid))
            if row is None:
                raise
            return get_settings().store_dir / row.path
