"""Attribute matching over the index, shared by QIDO-RS and DIMSE C-FIND (Study Root).

Matching follows PS3.4 C.2.2.2: single value, wildcard (``*``, ``?``) for text attributes,
UID lists (``\\`` or ``,`` separated), and ranges for dates (``20200101-20201231``, ``-2020``,
``2020-``). An empty value is a return key, not a filter. Results are plain dicts of DICOM
keywords; the callers turn them into DICOM JSON or datasets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session, aliased

from app.db.models import MAX_INT, Instance, Patient, Series, Study

LEVELS = ("STUDY", "SERIES", "INSTANCE")


class QueryError(ValueError):
    """A query MedGate cannot answer (unknown key, bad range, bad level)."""


# keyword -> (column, kind); kind: text (wildcards), uid (lists), date (ranges), int
STUDY_KEYS: dict[str, tuple[Any, str]] = {
    "PatientID": (Patient.patient_id, "text"),
    "IssuerOfPatientID": (Patient.issuer, "text"),
    "PatientName": (Patient.patient_name, "name"),
    "PatientBirthDate": (Patient.birth_date, "date"),
    "PatientSex": (Patient.sex, "text"),
    "StudyInstanceUID": (Study.study_uid, "uid"),
    "StudyDate": (Study.study_date, "date"),
    "StudyTime": (Study.study_time, "text"),
    "AccessionNumber": (Study.accession_number, "text"),
    "StudyID": (Study.study_id, "text"),
    "StudyDescription": (Study.study_description, "text"),
    "ReferringPhysicianName": (Study.referring_physician, "name"),
}
SERIES_KEYS: dict[str, tuple[Any, str]] = {
    "SeriesInstanceUID": (Series.series_uid, "uid"),
    "Modality": (Series.modality, "uid"),
    "SeriesNumber": (Series.series_number, "int"),
    "SeriesDescription": (Series.series_description, "text"),
    "BodyPartExamined": (Series.body_part, "text"),
}
INSTANCE_KEYS: dict[str, tuple[Any, str]] = {
    "SOPInstanceUID": (Instance.sop_instance_uid, "uid"),
    "SOPClassUID": (Instance.sop_class_uid, "uid"),
    "InstanceNumber": (Instance.instance_number, "int"),
}
# Computed or level attributes that are never filters.
RETURN_ONLY = {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
               "NumberOfSeriesRelatedInstances", "QueryRetrieveLevel", "RetrieveAETitle",
               "SpecificCharacterSet", "RetrieveURL", "TimezoneOffsetFromUTC",
               "InstanceAvailability", "AvailableTransferSyntaxUID", "Rows", "Columns",
               "NumberOfFrames", "BitsAllocated"}

LEVEL_KEYS = {"STUDY": STUDY_KEYS, "SERIES": {**STUDY_KEYS, **SERIES_KEYS},
              "INSTANCE": {**STUDY_KEYS, **SERIES_KEYS, **INSTANCE_KEYS}}
# Attributes each level returns by default (PS3.18 Table 10.6.3-3/4/5, the ones we index).
DEFAULT_RETURN = {
    "STUDY": ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
    "SERIES": ["StudyInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
               "SeriesInstanceUID", "BodyPartExamined", "NumberOfSeriesRelatedInstances"],
    "INSTANCE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
                 "InstanceNumber", "AvailableTransferSyntaxUID"],
}


def keyword(name: str) -> str:
    """Accept a DICOM keyword or a tag as 8 hex digits (``00100020``)."""
    name = name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        kw = keyword_for_tag(int(name, 16))
        if not kw:
            raise QueryError(f"unknown attribute tag {name}")
        return kw
    if tag_for_keyword(name) is None:
        raise QueryError(f"unknown attribute {name!r}")
    return name


@dataclass
class Query:
    level: str
    filters: dict[str, str] = field(default_factory=dict)
    study_uid: str | None = None
    series_uid: str | None = None
    limit: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise QueryError(f"query level must be one of {LEVELS}, not {self.level!r}")
        clean: dict[str, str] = {}
        for name, value in self.filters.items():
            kw = keyword(name)
            value = "" if value is None else str(value)
            if value == "" or value == "*":
                continue  # a return key
            if kw == "ModalitiesInStudy" or kw in LEVEL_KEYS[self.level]:
                clean[kw] = value
            elif kw not in RETURN_ONLY:
                raise QueryError(f"{kw} is not a supported matching key at {self.level} level; "
                                 f"supported: {', '.join(sorted(LEVEL_KEYS[self.level]))}")
        self.filters = clean
        if self.limit is not None and self.limit < 0 or self.offset < 0:
            raise QueryError("limit and offset must not be negative")
        if (self.limit or 0) > MAX_INT or self.offset > MAX_INT:
            raise QueryError(f"limit and offset must be at most {MAX_INT}")


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _values(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]


def _condition(column: Any, kind: str, value: str):  # noqa: ANN202 - SQL expression
    if kind == "uid":
        values = _values(value)
        return column.in_(values) if len(values) > 1 else column == values[0]
    if kind == "int":
        try:
            number = int(value)
        except ValueError as exc:
            raise QueryError(f"{value!r} is not a number") from exc
        if not -MAX_INT - 1 <= number <= MAX_INT:  # an IS value's range (PS3.5 6.2)
            raise QueryError(f"{value!r} is out of range for an integer string "
                             f"({-MAX_INT - 1} to {MAX_INT})")
        return column == number
    if kind == "date":
        value = value.replace(".", "")  # ACR-NEMA style dates
        if "-" in value:
            lo, _, hi = value.partition("-")
            if not all(re.fullmatch(r"\d{8}", v) for v in (lo, hi) if v) or not (lo or hi):
                raise QueryError(f"bad date range {value!r}; use YYYYMMDD-YYYYMMDD")
            conds = [column != ""]
            if lo:
                conds.append(column >= lo)
            if hi:
                conds.append(column <= hi)
            return and_(*conds)
        if not re.fullmatch(r"\d{8}", value):
            raise QueryError(f"bad date {value!r}; use YYYYMMDD")
        return column == value
    if kind == "name":
        # Person names match case-insensitively, as most PACS do for user-typed names.
        if "*" in value or "?" in value:
            return func.lower(column).like(_like(value.lower()), escape="\\")
        return func.lower(column) == value.lower()
    if "*" in value or "?" in value:
        return column.like(_like(value), escape="\\")
    return column == value


def _base(level: str) -> Select:
    if level == "STUDY":
        return select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
    if level == "SERIES":
        return (select(Series, Study, Patient).join(Study, Series.study_fk == Study.id)
                .join(Patient, Study.patient_fk == Patient.id))
    return (select(Instance, Series, Study, Patient)
            .join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .join(Patient, Study.patient_fk == Patient.id))


def _order(level: str) -> list[Any]:
    if level == "STUDY":
        return [Study.study_date.desc(), Study.id.desc()]
    if level == "SERIES":
        return [Series.series_number, Series.id]
    return [Instance.instance_number, Instance.id]


def search(session: Session, q: Query) -> list[dict[str, Any]]:
    stmt = _base(q.level)
    keys = LEVEL_KEYS[q.level]
    for kw, value in q.filters.items():
        if kw == "ModalitiesInStudy":
            # an alias: at SERIES and INSTANCE level the outer query has Series in its FROM,
            # which the subquery would otherwise correlate away
            other = aliased(Series)
            sub = select(other.id).where(other.study_fk == Study.id,
                                         other.modality.in_(_values(value)))
            stmt = stmt.where(sub.exists())
        else:
            column, kind = keys[kw]
            stmt = stmt.where(_condition(column, kind, value))
    if q.study_uid:
        stmt = stmt.where(Study.study_uid == q.study_uid)
    if q.series_uid and q.level == "INSTANCE":
        stmt = stmt.where(Series.series_uid == q.series_uid)
    stmt = stmt.order_by(*_order(q.level)).offset(q.offset)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    rows = session.execute(stmt).all()
    if not rows:
        return []
    # One more statement for the computed attributes of every matched study and series
    # (counts, ModalitiesInStudy), whatever the number of rows: never one per row.
    stats = _aggregates(session, {row[-2].id for row in rows})  # (..., Study, Patient)
    return [_attributes(q.level, row, stats) for row in rows]


@dataclass
class _Aggregates:
    """The computed attributes of the matched studies, from one grouped query."""
    study_series: dict[int, int] = field(default_factory=dict)
    study_instances: dict[int, int] = field(default_factory=dict)
    study_modalities: dict[int, set[str]] = field(default_factory=dict)
    series_instances: dict[int, int] = field(default_factory=dict)


def _aggregates(session: Session, study_ids: set[int]) -> _Aggregates:
    """Per series of the given studies its instance count, grouped in the database; the study
    counts and modalities are sums and sets of those rows."""
    out = _Aggregates()
    stmt = (select(Series.id, Series.study_fk, Series.modality, func.count(Instance.id))
            .select_from(Series).outerjoin(Instance, Instance.series_fk == Series.id)
            .where(Series.study_fk.in_(sorted(study_ids)))
            .group_by(Series.id, Series.study_fk, Series.modality))
    for series_id, study_id, modality, count in session.execute(stmt):
        out.series_instances[series_id] = count
        out.study_series[study_id] = out.study_series.get(study_id, 0) + 1
        out.study_instances[study_id] = out.study_instances.get(study_id, 0) + count
        if modality != "":
            out.study_modalities.setdefault(study_id, set()).add(modality)
    return out


def _patient_attrs(p: Patient) -> dict[str, Any]:
    return {"PatientID": p.patient_id, "IssuerOfPatientID": p.issuer,
            "PatientName": p.patient_name, "PatientBirthDate": p.birth_date,
            "PatientSex": p.sex}


def _study_attrs(s: Study, p: Patient, stats: _Aggregates) -> dict[str, Any]:
    return {**_patient_attrs(p), "StudyInstanceUID": s.study_uid, "StudyDate": s.study_date,
            "StudyTime": s.study_time, "AccessionNumber": s.accession_number,
            "StudyID": s.study_id, "StudyDescription": s.study_description,
            "ReferringPhysicianName": s.referring_physician,
            "ModalitiesInStudy": sorted(stats.study_modalities.get(s.id, ())),
            "NumberOfStudyRelatedSeries": stats.study_series.get(s.id, 0),
            "NumberOfStudyRelatedInstances": stats.study_instances.get(s.id, 0)}


def _series_attrs(se: Series, stats: _Aggregates) -> dict[str, Any]:
    return {"SeriesInstanceUID": se.series_uid, "Modality": se.modality,
            "SeriesNumber": se.series_number, "SeriesDescription": se.series_description,
            "BodyPartExamined": se.body_part,
            "NumberOfSeriesRelatedInstances": stats.series_instances.get(se.id, 0)}


def _attributes(level: str, row: Any, stats: _Aggregates) -> dict[str, Any]:
    if level == "STUDY":
        study, patient = row
        return _study_attrs(study, patient, stats)
    if level == "SERIES":
        series, study, patient = row
        return {**_study_attrs(study, patient, stats), **_series_attrs(series, stats)}
    inst, series, study, patient = row
    return {**_study_attrs(study, patient, stats), **_series_attrs(series, stats),
            "SOPInstanceUID": inst.sop_instance_uid, "SOPClassUID": inst.sop_class_uid,
            "InstanceNumber": inst.instance_number,
            "AvailableTransferSyntaxUID": inst.transfer_syntax_uid, "_path": inst.path}


def instances_for(session: Session, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[Instance]:
    """Instances for retrieval (WADO-RS), in series and instance order."""
    stmt = (select(Instance).join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id).where(Study.study_uid == study_uid))
    if series_uid:
        stmt = stmt.where(Series.series_uid == series_uid)
    if sop_uid:
        stmt = stmt.where(Instance.sop_instance_uid == sop_uid)
    stmt = stmt.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    return list(session.scalars(stmt))


__all__ = ["Query", "QueryError", "search", "instances_for", "DEFAULT_RETURN", "keyword"]
