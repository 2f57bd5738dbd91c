"""A report version as the exporters read it: everything an SR or a FHIR resource states, in one
plain structure, built from the database by the service layer. The writers (``sr``, ``fhir``)
take only this, so they can be tested without a database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Person:
    name: str  # "Dr Jane Doe" (a DICOM PN is made from it)
    id: str = ""  # the site's staff / GMC / NPI number


@dataclass(frozen=True)
class MeasurementItem:
    """One measurement of an engine result (``models.base.Measurement.to_dict()``), with the
    model that made it."""

    id: str
    name: str
    value: float
    unit: str  # UCUM
    code: dict[str, str] | None  # {"scheme", "value", "meaning"}
    where: dict[str, Any]  # models.base.Where.to_dict(): instance_uid, frame, series_uid, slices,
    #                        lead, start_s, end_s, region_id
    model: str  # "family@version"


@dataclass(frozen=True)
class FindingItem:
    """One finding of a trained result (``models.base.Finding.to_dict()``)."""

    code: dict[str, str]
    label: str
    state: str  # present | absent | uncertain
    evidence: tuple[str, ...]  # measurement and region ids
    knowledge: tuple[str, ...]
    where: dict[str, Any]
    criteria: str
    model: str


@dataclass(frozen=True)
class RegionItem:
    """One region (``models.base.Region``): a box or polygon in pixels of an instance, or a
    mask; ``seg`` names the DICOM SEG a mask was stored as ({"sop_instance_uid",
    "series_uid"})."""

    id: str
    kind: str
    instance_uid: str | None
    frame: int | None
    box: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    label: str = ""
    seg: dict[str, str] | None = None
    model: str = ""


@dataclass(frozen=True)
class SourceInstance:
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    path: Path


@dataclass(frozen=True)
class ReportDocument:
    """One report version. ``sections`` is the text as it stands (technique, findings,
    impression); ``state`` the lifecycle state (draft, edited, final, amended, corrected);
    ``models`` the trained model versions behind it ("family@version"); ``signed_by`` and
    ``signed_at`` once signed; ``predecessor`` the SR this version replaces (an amendment or a
    correction): {"study_uid", "series_uid", "sop_instance_uid", "sop_class_uid"}."""

    report_id: int
    version: int
    state: str
    domain: str
    study_uid: str
    accession_number: str
    sections: dict[str, str]
    created_at: datetime
    sources: tuple[SourceInstance, ...]
    models: tuple[str, ...] = ()
    findings: tuple[FindingItem, ...] = ()
    measurements: tuple[MeasurementItem, ...] = ()
    regions: tuple[RegionItem, ...] = ()
    author: Person | None = None
    signed_by: Person | None = None
    signed_at: datetime | None = None
    reason: str | None = None
    predecessor: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
