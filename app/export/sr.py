"""A report version (``app.export.document.ReportDocument``) as a DICOM Structured Report that
follows TID 1500 "Measurement Report", built with highdicom's TID 1500 classes.

``build_sr`` writes one Comprehensive 3D SR instance (SOP class 1.2.840.10008.5.1.4.1.1.88.34)
per report version; ``sr_summary`` reads one back (with highdicom) into plain values, for tests
and for comparing what a PACS returns with what was sent.

SOP class: Comprehensive 3D SR for every report. MedGate's measurements may carry temporal
coordinates on a waveform (TCOORD, WAVEFORM: an ECG lead and time range) and may later carry
3D coordinates (SCOORD3D, e.g. a CT lesion centre in patient space); Comprehensive 3D SR is the
one SR IOD that admits every value type TID 1500 may need, and one SOP class for all domains
keeps what receivers must accept to one.

Content tree (relationship, value type, concept; ``[n]`` = repeated)::

    CONTAINER Imaging Measurement Report (DCM 126000)                          TID 1500
      HAS CONCEPT MOD CODE   Language of Content Item and Descendants = en-US (RFC5646)
      HAS OBS CONTEXT CODE   Observer Type = Person (DCM 121006)           once signed, TID 1002
      HAS OBS CONTEXT PNAME  Person Observer Name                                   TID 1003
      HAS OBS CONTEXT TEXT   Person Observer's Organization Name
      HAS OBS CONTEXT TEXT   Identifier within Person Observer's Role    signer with an id
      HAS OBS CONTEXT CODE   Observer Type = Device (DCM 121007)          [n: model versions]
      HAS OBS CONTEXT UIDREF Device Observer UID                                    TID 1004
      HAS OBS CONTEXT TEXT   Device Observer Name = "MedGate <family>"
      HAS OBS CONTEXT TEXT   Device Observer Manufacturer = "MedGate"
      HAS OBS CONTEXT TEXT   Device Observer Model Name = <version>
      HAS OBS CONTEXT CODE   Subject Class = Specimen, + TID 1009 items    slides with specimens
      HAS CONCEPT MOD CODE   Procedure reported = <the domain's procedure>
      CONTAINS CONTAINER Imaging Measurements (DCM 126010)
        CONTAINS CONTAINER Measurement Group (DCM 125007)   [n: regions]     TID 1410 / 1411
          HAS OBS CONTEXT TEXT   Tracking Identifier = region label (or id)
          HAS OBS CONTEXT UIDREF Tracking Unique Identifier
          HAS CONCEPT MOD TEXT   Algorithm Name, Algorithm Version (region's model, TID 4019)
          CONTAINS NUM    <measurement> [n: measurements whose region_id is this region]
          CONTAINS CODE   <finding> = Present|Absent|Undetermined [n: findings with it as
                                                                      evidence]
          one of:
          CONTAINS SCOORD Image Region, POLYLINE closed                box / polygon (1410)
            SELECTED FROM IMAGE Source (the instance[, frame])
          CONTAINS IMAGE  Referenced Segmentation Frame (SEG frame)    mask with SEG (1410)
          CONTAINS IMAGE  Source Image for Segmentation
          CONTAINS IMAGE  Referenced Segment (SEG segment)             mask3d with SEG (1411)
          CONTAINS IMAGE  Source Image for Segmentation [n: the series' slices]
        CONTAINS CONTAINER Measurement Group (DCM 125007)   [n: other findings]    TID 1501
          HAS OBS CONTEXT TEXT   Tracking Identifier = finding label
          HAS OBS CONTEXT UIDREF Tracking Unique Identifier
          HAS CONCEPT MOD TEXT   Algorithm Name, Algorithm Version (finding's model)
          CONTAINS CODE   <finding> = Present|Absent|Undetermined
          CONTAINS IMAGE  Source of Measurement (the finding's instance, when it names one)
        CONTAINS CONTAINER Measurement Group (DCM 125007)   [n: models with measurements
                                                             outside regions]    TID 1501
          HAS OBS CONTEXT TEXT   Tracking Identifier = "<family> <version> measurements"
          HAS OBS CONTEXT UIDREF Tracking Unique Identifier
          HAS CONCEPT MOD TEXT   Algorithm Name, Algorithm Version
          CONTAINS NUM    <measurement> = value <UCUM unit>  [n]                 TID 300
            INFERRED FROM IMAGE    Source of Measurement [n: the instance[, frame], or each
                                                          slice of a slice range]
            HAS CONCEPT MOD CODE   Lead ID = <the waveform channel's own code>  (TEXT when
                                                            the waveform has no such lead)
            INFERRED FROM TCOORD   Source of Measurement, SEGMENT (start, end s) | POINT
              SELECTED FROM WAVEFORM Source of Measurement (ECG; multiplex group, channel)
            or INFERRED FROM WAVEFORM Source of Measurement        (no time range given)
      CONTAINS CONTAINER Qualitative Evaluations (UMLS C0034375)       report text, TID 1500
        CONTAINS TEXT Procedure Description (DCM 121065) = sections["technique"]
        CONTAINS TEXT Finding (DCM 121071)               = sections["findings"]
        CONTAINS TEXT Impression (DCM 121073)            = sections["impression"]
        CONTAINS TEXT History (121060), Recommendation (121075), Conclusion (121077),
                      Addendum (121078); other sections: 99MEDGATE "section-<key>"
        CONTAINS TEXT Reason for change (99MEDGATE reason-for-change) = doc.reason

Each NUM item carries an Observation UID derived from (study, report, measurement id, name,
value, unit), and its own Algorithm Name / Version only when its model is not its group's.

A report with no region, finding or measurement still gets one (empty) TID 1501 group,
"MedGate report": highdicom's TID 1500 needs at least one, and the text is what it reports.

Choices:

- **Findings** are qualitative evaluations whose concept name is the finding's code and whose
  value is CID 240 "Present" (SCT 52101004), "Absent" (SCT 272519000) or "Undetermined" (SCT
  373068000) for MedGate's present / absent / uncertain. A finding whose evidence names a region
  goes into that region's group (the region says where it is); others get a group of their own.
- **Tracking Unique Identifiers** are derived from (study, report id, region / finding /
  model), so a region or finding keeps its UID across the versions of one report.
- **Device observers**: one per model version ("family@version") of ``doc.models`` and of the
  items; Device Observer UID derived from "family@version" ("2.25." + a name-based UUID,
  RFC 4122 version 5), the same in every SR MedGate writes.
- **Person observer**: the signer, once signed. The name is made into a DICOM PN by
  ``person_name``: a leading title (Dr, Prof, Mr, Mrs, Ms, Miss, Mx, Sir, Dame) becomes the
  prefix, the last word the family name, the first remaining word the given name and the rest
  middle names ("Dr Jane Doe" -> "Doe^Jane^^Dr"); "Doe, Jane" puts the family name first.
- **Flags** (DESIGN.md, report lifecycle): draft / edited -> Completion PARTIAL, Verification
  UNVERIFIED, Preliminary PRELIMINARY; final / amended / corrected -> COMPLETE, VERIFIED,
  FINAL, with the Verifying Observer Sequence (the signer's PN, ``organization``, Verification
  DateTime = ``signed_at``). Other states (pending, cancelled, entered_in_error) are refused.
  Content Date / Time is the version's ``created_at``.
- **Predecessor** (amended / corrected): ``doc.predecessor`` becomes the Predecessor Documents
  Sequence (study, series, SOP class and instance of the SR this one replaces).
- **Contributing Equipment**: highdicom's items (the source's acquisition equipment, highdicom)
  plus MedGate and each model version, Purpose of Reference DCM 109102 "Processing Equipment"
  (CID 7005: equipment that processed the source data to make this instance; 109103 "Modifying
  Equipment" is for equipment that changed an existing instance).
- **Locations** of measurements (``where``): ``region_id`` -> the region's group; an image
  instance (and frame) -> Source of Measurement IMAGE; a slice range of a series -> one
  Source of Measurement IMAGE per slice, slices sorted as MedGate's CT volumes sort them
  (increasing position along the slice normal; Enhanced CT: frames of the one instance;
  ``slice_index`` is a range of one slice); a series alone -> each of its instances; an
  ECG lead / time range -> Lead ID and TCOORD/WAVEFORM (TID 300 has no row for a waveform
  reference; Comprehensive 3D SR's relationship constraints allow NUM INFERRED FROM TCOORD
  SELECTED FROM WAVEFORM); a lead the waveform does not name is a TEXT "Lead ID". A
  measurement with no location in a report of one source instance references that instance.
- **Regions**: a box (x, y, width, height) or polygon in pixels -> SCOORD POLYLINE, closed
  (first point repeated), on the instance (and frame); a mask stored as SEG (``seg``:
  "sop_instance_uid", "series_uid", optional "segment_number" (default 1), "frame_number"
  (default: the segment number, as ``app.dicom.seg`` writes one frame per segment),
  "study_uid", "source_series_uid") -> Referenced Segmentation Frame (kind "mask") or
  Referenced Segment (kind "mask3d", whose source images are the source series' instances).
  A mask without a SEG has no geometry to write: its group references its instance.
- **Codes** without a standard code (a measurement without ``code``, an unnamed section) use
  MedGate's private scheme ``99MEDGATE``, declared in the Coding Scheme Identification
  Sequence; dciodvfy warns about the designator, which is not an error.
- **highdicom 0.28 workarounds**: its content parser has no WAVEFORM class (building or
  reading an SR with a WAVEFORM item raises KeyError), so the WAVEFORM references (and the
  TCOORDs over them) are added to the built dataset, found by the NUM items' Observation UID,
  and ``sr_summary`` hands highdicom a copy without them; ``highdicom.sr.srread`` itself
  cannot read an ECG SR from here. Its Referenced Segmentation Frame item carries both
  Referenced Frame Number and Referenced Segment Number, which PS3.3 C.10.5 forbids (dciodvfy:
  "Shall not be present when ReferencedFrameNumber is present"): the segment number is
  dropped (the SEG frame names its segment). The object returned is highdicom's
  ``Comprehensive3DSR``; its ``content`` property is highdicom's parse from before these
  additions, the dataset itself (what is written) has them.
- Patient and study attributes come from the source headers (highdicom copies them from the
  first source of ``doc.study_uid``); Accession Number is the report's when it has one.

Refusals (``SRError``): a state with nothing to export, a signed state without signer or time,
a malformed model name, sources that are missing or of another study, an item naming an
instance, region or series the report's sources do not hold, a slice range beyond its series.
"""

from __future__ import annotations

import io
import re
import uuid
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code as PydicomCode

from app.dicom.seg import (
    PRIVATE_SCHEME,
    SEG_STORAGE,
    _charset,
    _header,
    _instance_attributes,
    _lo,
    _private_code,
    _private_scheme,
    medgate_version,
)
from app.export.document import (
    FindingItem,
    MeasurementItem,
    RegionItem,
    ReportDocument,
)
from models.base import Code

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
UNVERIFIED_STATES = ("draft", "edited")
VERIFIED_STATES = ("final", "amended", "corrected")
SR_SERIES_NUMBER = 9100
MANUFACTURER = "MedGate"

# Procedure reported (TID 1500 row 3, CID 100 extensible), per domain. Verified in pydicom's
# code dictionary: LN 25045-6 (CID 100), SCT 104157003 (CID 8131), SCT 363679005 (CID 100).
# SCT 399208008 and 29303009 are SNOMED CT procedures pydicom does not list.
PROCEDURES = {
    "cxr": Code("SCT", "399208008", "Plain chest X-ray"),
    "ct": Code("LN", "25045-6", "CT unspecified body region"),
    "ecg": Code("SCT", "29303009", "Electrocardiographic procedure"),
    "pathology": Code("SCT", "104157003", "Light microscopy"),
}
IMAGING_PROCEDURE = Code("SCT", "363679005", "Imaging procedure")

# Finding state -> CID 240 "Present-Absent-Undetermined" (all in pydicom's dictionary).
STATE_CODES = {
    "present": Code("SCT", "52101004", "Present"),
    "absent": Code("SCT", "272519000", "Absent"),
    "uncertain": Code("SCT", "373068000", "Undetermined"),
}
_STATE_BY_VALUE = {c.value: s for s, c in STATE_CODES.items()}

# Report sections -> TEXT concept names (CID 7002 "Diagnostic Imaging Report Elements"; all in
# pydicom's dictionary).
SECTION_CODES = {
    "technique": Code("DCM", "121065", "Procedure Description"),
    "findings": Code("DCM", "121071", "Finding"),
    "impression": Code("DCM", "121073", "Impression"),
    "history": Code("DCM", "121060", "History"),
    "recommendation": Code("DCM", "121075", "Recommendation"),
    "recommendations": Code("DCM", "121075", "Recommendation"),
    "conclusion": Code("DCM", "121077", "Conclusion"),
    "addendum": Code("DCM", "121078", "Addendum"),
}
REASON_CODE = Code(PRIVATE_SCHEME, "reason-for-change", "Reason for change")
# TID 1500 row 12 (not in pydicom's dictionary; as PS3.16 and the DICOM SR-to-FHIR IG write it).
# models.base.Code knows no UMLS, hence pydicom's Code.
QUALITATIVE_EVALUATIONS = PydicomCode("C0034375", "UMLS", "Qualitative Evaluations")
SOURCE_OF_MEASUREMENT = Code("DCM", "121112", "Source of Measurement")
LEAD_ID = Code("DCM", "122148", "Lead ID")
IDENTIFIER_IN_ROLE = Code("DCM", "128775", "Identifier within Person Observer's Role")

_TITLES = {"dr", "prof", "professor", "mr", "mrs", "ms", "miss", "mx", "sir", "dame"}
_PN_UNSAFE = re.compile(r"[\^=\\\x00-\x1f]")
_WAVEFORM_PREFIX = "1.2.840.10008.5.1.4.1.1.9."


class SRError(ValueError):
    """The report version cannot make a valid SR; the message says why."""


# ---------------------------------------------------------------------------------------------
# small helpers


def _concept(code: Code | PydicomCode | dict[str, str]):
    import highdicom as hd

    if isinstance(code, PydicomCode):
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    if isinstance(code, dict):
        try:
            code = Code.from_dict(code)
        except ValueError as exc:
            raise SRError(f"invalid code {code!r}: {exc}") from exc
    return hd.sr.CodedConcept(code.value, code.scheme, _lo(code.meaning))


_UID_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-5c7d-9e0f-4d6d65646761")


def _uid(*parts: Any) -> str:
    """A UID derived from the parts: "2.25." and the integer of a name-based UUID (RFC 4122
    version 5; PS3.5 B.2): the same parts, the same UID. (pydicom's ``generate_uid`` ignores
    ``entropy_srcs`` when ``prefix`` is None, so it cannot make these.)"""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _split_model(model: str) -> tuple[str, str]:
    family, sep, version = str(model).partition("@")
    if not sep or not family.strip() or not version.strip():
        raise SRError(f"model {model!r} is not 'family@version'")
    return family.strip(), version.strip()


def device_uid(model: str) -> str:
    """The Device Observer UID of a model version ("family@version"): the same in every SR."""
    family, version = _split_model(model)
    return _uid("medgate-device", f"{family}@{version}")


def person_name(text: str) -> str:
    """A DICOM PN from a display name: "Dr Jane Doe" -> "Doe^Jane^^Dr", "Jane Mary Doe" ->
    "Doe^Jane^Mary", "Doe, Jane" -> "Doe^Jane", "Radiologist" -> "Radiologist^" (a family
    name alone, with the caret highdicom asks for). Components are cut to 64 characters."""
    clean = _PN_UNSAFE.sub(" ", str(text)).strip()
    if not clean:
        raise SRError("a person's name is empty")
    if "," in clean:
        family, _, rest = clean.partition(",")
        words = rest.split()
        family_words = family.split()
    else:
        words = clean.split()
        family_words = []
    prefix = []
    while words and words[0].rstrip(".").lower() in _TITLES and len(words) + len(family_words) > 1:
        prefix.append(words.pop(0).rstrip("."))
    if not family_words:
        family_words = [words.pop()] if words else []
    given = words[:1]
    middle = words[1:]
    parts = [" ".join(family_words), " ".join(given), " ".join(middle), " ".join(prefix)]
    parts = [p[:64].strip() for p in parts]
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    if len(parts) == 1:
        return parts[0] + "^"
    return "^".join(parts)


def _dt(value: datetime) -> str:
    from pydicom.valuerep import DT

    return str(DT(value))


def _is_waveform(sop_class_uid: str) -> bool:
    return str(sop_class_uid).startswith(_WAVEFORM_PREFIX)


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


# ---------------------------------------------------------------------------------------------
# sources


class _Sources:
    """The source headers by SOP Instance UID, and their series."""

    def __init__(self, headers: Sequence[Dataset]):
        self.headers = list(headers)
        self.by_uid = {str(h.SOPInstanceUID): h for h in self.headers}
        self.series: dict[str, list[Dataset]] = {}
        for h in self.headers:
            self.series.setdefault(str(h.SeriesInstanceUID), []).append(h)

    def get(self, uid: str, what: str) -> Dataset:
        header = self.by_uid.get(str(uid))
        if header is None:
            raise SRError(f"{what} names instance {uid}, which is not among the report's "
                          "sources")
        return header

    def frames_of(self, header: Dataset, frame: int | None, what: str) -> list[int] | None:
        n = _frames(header)
        if frame is None:
            return None
        if not 1 <= int(frame) <= n:
            raise SRError(f"{what}: frame {frame} is outside the instance's frames 1..{n}")
        return [int(frame)] if n > 1 else None

    def image_series(self) -> list[str]:
        return [uid for uid, items in self.series.items()
                if any(not _is_waveform(h.SOPClassUID) for h in items)]

    def slices(self, series_uid: str | None, first: int, last: int,
               what: str) -> list[tuple[Dataset, int | None]]:
        """The (instance, frame) of slices first..last (0-based, increasing position along the
        slice normal) of a series; frame is None for single-frame instances."""
        if not series_uid:
            candidates = self.image_series()
            if len(candidates) != 1:
                raise SRError(f"{what} gives a slice range without its series, and the "
                              f"report's sources hold {len(candidates)} image series")
            series_uid = candidates[0]
        items = self.series.get(str(series_uid))
        if not items:
            raise SRError(f"{what} names series {series_uid}, which is not among the report's "
                          "sources")
        ordered = _ordered_slices(items)
        if last >= len(ordered):
            raise SRError(f"{what}: slices {first}..{last} are beyond the series' "
                          f"{len(ordered)} slices")
        return ordered[first:last + 1]


def _normal(iop: Any) -> np.ndarray | None:
    try:
        v = np.asarray([float(x) for x in iop], dtype=float)
    except (TypeError, ValueError):
        return None
    if v.size != 6:
        return None
    n = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _position(ipp: Any) -> np.ndarray | None:
    try:
        v = np.asarray([float(x) for x in ipp], dtype=float)
    except (TypeError, ValueError):
        return None
    return v if v.size == 3 else None


def _ordered_slices(items: list[Dataset]) -> list[tuple[Dataset, int | None]]:
    """Slices of a series in MedGate's spatial order: increasing position along the slice
    normal (as ``models.ct.volume`` sorts them); InstanceNumber where the geometry is absent."""
    if len(items) == 1 and _frames(items[0]) > 1:
        ds = items[0]
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        keyed = []
        for i in range(_frames(ds)):
            item = per_frame[i] if i < len(per_frame) else Dataset()
            orient = item.get("PlaneOrientationSequence") or shared.get(
                "PlaneOrientationSequence")
            pos = item.get("PlanePositionSequence") or shared.get("PlanePositionSequence")
            normal = _normal(orient[0].get("ImageOrientationPatient")) if orient else None
            point = _position(pos[0].get("ImagePositionPatient")) if pos else None
            key = float(np.dot(normal, point)) if normal is not None and point is not None \
                else float(i)
            keyed.append((key, i + 1))
        keyed.sort()
        return [(ds, frame) for _, frame in keyed]
    normal = _normal(items[0].get("ImageOrientationPatient"))

    def key(ds: Dataset) -> tuple[float, float]:
        point = _position(ds.get("ImagePositionPatient"))
        number = float(ds.get("InstanceNumber") or 0)
        if normal is not None and point is not None:
            return float(np.dot(normal, point)), number
        return number, 0.0

    return [(ds, None) for ds in sorted(items, key=key)]


def _read_sources(doc: ReportDocument) -> list[Dataset]:
    headers = []
    for src in doc.sources:
        path = Path(src.path)
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise SRError(f"source {src.sop_instance_uid} cannot be read from {path}: "
                          f"{exc}") from exc
    return headers


# ---------------------------------------------------------------------------------------------
# content


def _algorithm(model: str):
    import highdicom as hd

    if not model:
        return None
    family, version = _split_model(model)
    return hd.sr.AlgorithmIdentification(name=_lo(family), version=_lo(version))


def _observer_context(doc: ReportDocument, models: list[str], organization: str,
                      subject: Any):
    import highdicom as hd
    from highdicom.sr import PersonObserverIdentifyingAttributes as PersonAttrs
    from pydicom.sr.codedict import codes

    person = None
    if doc.signed_by is not None:
        attrs = PersonAttrs(name=person_name(doc.signed_by.name),
                            organization_name=_lo(organization))
        if doc.signed_by.id:
            attrs.append(hd.sr.TextContentItem(
                name=_concept(IDENTIFIER_IN_ROLE), value=_lo(doc.signed_by.id),
                relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT))
        person = hd.sr.ObserverContext(observer_type=codes.cid270.Person,
                                       observer_identifying_attributes=attrs)
    devices = []
    for model in models:
        family, version = _split_model(model)
        devices.append(hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid(model), name=_lo(f"MedGate {family}"),
                manufacturer_name=MANUFACTURER, model_name=_lo(version))))
    context = hd.sr.ObservationContext(
        observer_person_context=person,
        observer_device_context=devices[0] if devices else None)
    for device in devices[1:]:
        context.extend(device)
    if subject is not None:
        context.extend(subject)
    return context


def _tracking(label: str, *parts: Any):
    import highdicom as hd

    return hd.sr.TrackingIdentifier(uid=_uid(*parts), identifier=_lo(label) or "item")


class _Builder:
    def __init__(self, doc: ReportDocument, sources: _Sources):
        self.doc = doc
        self.sources = sources
        self.private = False
        self.seg_evidence: dict[str, Dataset] = {}
        # NUM items' Observation UID -> WAVEFORM-bearing children, which highdicom 0.28 cannot
        # take (its content parser has no WAVEFORM class): added to the built SR by _finish
        self.pending: dict[str, list[Dataset]] = {}
        self.count = 0

    # codes -----------------------------------------------------------------------------------

    def code(self, code: Code | dict[str, str] | None, fallback: str, prefix: str):
        if code is None:
            code = _private_code(fallback, prefix)
        concept = _concept(code)
        if concept.scheme_designator == PRIVATE_SCHEME:
            self.private = True
        return concept

    # measurements ----------------------------------------------------------------------------

    def measurement(self, m: MeasurementItem, *, located: bool, group_model: str = ""):
        """A TID 300 measurement; ``located``: its group says where it was taken (a region).
        Its own Algorithm Identification only where its model is not its group's."""
        import highdicom as hd

        what = f"measurement {m.id or m.name!r}"
        name = self.code(m.code, m.name, "measurement")
        unit = hd.sr.CodedConcept(m.unit, "UCUM", m.unit)
        images = None if located else self.measurement_images(m, what)
        try:
            item = hd.sr.Measurement(name=name, value=float(m.value), unit=unit,
                                     algorithm_id=_algorithm(m.model)
                                     if m.model != group_model else None,
                                     referenced_images=images or None)
        except (TypeError, ValueError) as exc:
            raise SRError(f"{what}: {exc}") from exc
        self.count += 1
        # the same measurement (id, name, value, unit) has the same Observation UID in every
        # version of the report
        item[0].ObservationUID = _uid(self.doc.study_uid, self.doc.report_id, "observation",
                                      m.id or self.count, m.name, repr(float(m.value)), m.unit)
        if not located:
            self.waveform_location(item[0], m, what)
        return item

    def measurement_images(self, m: MeasurementItem, what: str):
        import highdicom as hd

        where = m.where or {}
        refs: list[tuple[Dataset, list[int] | None]] = []
        slices = where.get("slices")
        if slices is None and where.get("slice_index") is not None \
                and not where.get("instance_uid"):
            slices = (where["slice_index"], where["slice_index"])
        if slices is not None:
            try:
                first, last = (int(v) for v in slices)
            except (TypeError, ValueError) as exc:
                raise SRError(f"{what}: slice range {slices!r} is not (first, last)") from exc
            if not 0 <= first <= last:
                raise SRError(f"{what}: slice range {first}..{last} is not first <= last")
            for ds, frame in self.sources.slices(where.get("series_uid"), first, last, what):
                refs.append((ds, [frame] if frame is not None else None))
        elif where.get("instance_uid"):
            ds = self.sources.get(where["instance_uid"], what)
            if _is_waveform(ds.SOPClassUID):
                return []
            refs.append((ds, self.sources.frames_of(ds, where.get("frame"), what)))
        elif where.get("series_uid") and not self._waveform_where(where):
            items = self.sources.series.get(str(where["series_uid"]))
            if not items:
                raise SRError(f"{what} names series {where['series_uid']}, which is not among "
                              "the report's sources")
            ordered = {str(ds.SOPInstanceUID): ds for ds, _ in _ordered_slices(items)}
            refs.extend((ds, None) for ds in ordered.values())
        elif not self._waveform_where(where) and len(self.sources.headers) == 1:
            only = self.sources.headers[0]
            if not _is_waveform(only.SOPClassUID):
                refs.append((only, None))
        return [hd.sr.SourceImageForMeasurement(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                frames) for ds, frames in refs]

    @staticmethod
    def _waveform_where(where: dict[str, Any]) -> bool:
        return any(where.get(k) is not None for k in ("lead", "start_s", "end_s"))

    def _waveform_source(self, where: dict[str, Any], what: str) -> Dataset | None:
        if where.get("instance_uid"):
            ds = self.sources.get(where["instance_uid"], what)
            return ds if _is_waveform(ds.SOPClassUID) else None
        waves = [h for h in self.sources.headers if _is_waveform(h.SOPClassUID)]
        return waves[0] if len(waves) == 1 else None

    def waveform_location(self, num: Dataset, m: MeasurementItem, what: str) -> None:
        """Lead ID and TCOORD / WAVEFORM references under the NUM item of an ECG measurement
        (or the whole waveform, for a measurement with no location in a one-waveform report)."""
        import highdicom as hd

        where = m.where or {}
        source = self._waveform_source(where, what)
        if not self._waveform_where(where):
            # no lead or time: the whole waveform, when the measurement names it or is the
            # report's one source
            placed = any(where.get(k) is not None for k in
                         ("instance_uid", "series_uid", "slices", "slice_index", "region_id"))
            named = bool(where.get("instance_uid")) and source is not None
            if source is None or not (named or (not placed and len(self.sources.headers) == 1)):
                return
        rel = hd.sr.RelationshipTypeValues
        children = []  # highdicom parses these at build time
        later = []  # WAVEFORM items (and TCOORDs over them): added after highdicom's build
        lead = where.get("lead")
        channel = self._channel(source, str(lead)) if source is not None and lead else None
        if lead:
            if channel is not None:
                children.append(hd.sr.CodeContentItem(
                    name=_concept(LEAD_ID), value=channel[2],
                    relationship_type=rel.HAS_CONCEPT_MOD))
            else:
                children.append(hd.sr.TextContentItem(
                    name=_concept(LEAD_ID), value=_lo(str(lead)),
                    relationship_type=rel.HAS_CONCEPT_MOD))
        if source is not None:
            channels = [channel[:2]] if channel is not None else None
            wave = hd.sr.WaveformContentItem(
                name=_concept(SOURCE_OF_MEASUREMENT),
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                referenced_waveform_channels=channels)
            times = [float(where[k]) for k in ("start_s", "end_s") if where.get(k) is not None]
            if times:
                if len(times) == 2 and times[1] < times[0]:
                    raise SRError(f"{what}: time range {times[0]}..{times[1]} s ends before it "
                                  "starts")
                wave.RelationshipType = rel.SELECTED_FROM.value
                tcoord = hd.sr.TcoordContentItem(
                    name=_concept(SOURCE_OF_MEASUREMENT),
                    temporal_range_type="SEGMENT" if len(times) == 2 else "POINT",
                    referenced_time_offsets=times, relationship_type=rel.INFERRED_FROM)
                tcoord.ContentSequence = hd.sr.ContentSequence([wave])
                later.append(tcoord)
            else:
                wave.RelationshipType = rel.INFERRED_FROM.value
                later.append(wave)
        if children:
            if "ContentSequence" not in num:
                num.ContentSequence = hd.sr.ContentSequence()
            num.ContentSequence.extend(children)
        if later:
            self.pending[str(num.ObservationUID)] = later

    @staticmethod
    def _channel(source: Dataset, lead: str):
        """(multiplex group, channel, channel source code) of a lead ("II", "V1", "aVR") in a
        waveform, matched on the channel source's meaning ("Lead II", "Lead I (Einthoven)")."""
        import highdicom as hd

        want = _lead_key(lead)
        for g, group in enumerate(source.get("WaveformSequence") or [], start=1):
            for c, channel in enumerate(group.get("ChannelDefinitionSequence") or [], start=1):
                src = (channel.get("ChannelSourceSequence") or [None])[0]
                label = channel.get("ChannelLabel") or ""
                meaning = src.get("CodeMeaning", "") if src is not None else ""
                if want and want in (_lead_key(meaning), _lead_key(label)):
                    if src is None:
                        return None
                    code = hd.sr.CodedConcept(
                        _code_value(src), src.CodingSchemeDesignator, _lo(src.CodeMeaning),
                        scheme_version=src.get("CodingSchemeVersion") or None)
                    return g, c, code
        return None

    # regions ---------------------------------------------------------------------------------

    def region_group(self, region: RegionItem, measurements: list, findings: list):
        import highdicom as hd

        what = f"region {region.id!r}"
        tracking = _tracking(region.label or region.id, self.doc.study_uid, self.doc.report_id,
                             "region", region.id)
        common = {"tracking_identifier": tracking, "measurements": measurements or None,
                  "qualitative_evaluations": findings or None,
                  "algorithm_id": _algorithm(region.model)}
        try:
            if region.seg:
                return self._segment_group(region, what, common)
            if region.box is not None or region.polygon is not None:
                header = self.sources.get(region.instance_uid or "", what) \
                    if region.instance_uid else None
                if header is None:
                    raise SRError(f"{what} has a {region.kind} but names no instance")
                return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    referenced_region=self._image_region(region, header, what), **common)
        except SRError:
            raise
        except (TypeError, ValueError) as exc:
            raise SRError(f"{what}: {exc}") from exc
        # a mask without a SEG: no geometry to write; its instance is the group's source
        images = None
        if region.instance_uid:
            header = self.sources.get(region.instance_uid, what)
            if not _is_waveform(header.SOPClassUID):
                images = [hd.sr.SourceImageForMeasurementGroup(
                    str(header.SOPClassUID), str(header.SOPInstanceUID),
                    self.sources.frames_of(header, region.frame, what))]
        return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=images, **common)

    def _image_region(self, region: RegionItem, header: Dataset, what: str):
        import highdicom as hd

        if region.box is not None:
            x, y, w, h = (float(v) for v in region.box)
            points = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        else:
            points = [(float(px), float(py)) for px, py in region.polygon or ()]
            if len(points) < 3:
                raise SRError(f"{what}: a polygon needs at least 3 points")
        points.append(points[0])
        frames = self.sources.frames_of(header, region.frame, what)
        source = hd.sr.SourceImageForRegion(str(header.SOPClassUID),
                                            str(header.SOPInstanceUID), frames)
        multi = _frames(header) > 1
        tiled = "TotalPixelMatrixRows" in header
        interpretation = None
        if multi:
            interpretation = "VOLUME" if tiled and frames is None else "FRAME"
            if interpretation == "FRAME" and frames is None:
                raise SRError(f"{what} lies on a multi-frame instance: it needs its frame")
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                 graphic_data=np.asarray(points, dtype=float),
                                 source_image=source,
                                 pixel_origin_interpretation=interpretation)

    def _segment_group(self, region: RegionItem, what: str, common: dict[str, Any]):
        import highdicom as hd

        seg = dict(region.seg or {})
        seg_uid = str(seg.get("sop_instance_uid") or "")
        seg_series = str(seg.get("series_uid") or "")
        if not seg_uid or not seg_series:
            raise SRError(f"{what}: its seg needs 'sop_instance_uid' and 'series_uid'")
        try:
            segment = int(seg.get("segment_number") or 1)
            frame = int(seg.get("frame_number") or segment)
        except (TypeError, ValueError) as exc:
            raise SRError(f"{what}: segment and frame numbers must be integers") from exc
        evidence = Dataset()
        evidence.SOPClassUID = SEG_STORAGE
        evidence.SOPInstanceUID = seg_uid
        evidence.SeriesInstanceUID = seg_series
        evidence.StudyInstanceUID = str(seg.get("study_uid") or self.doc.study_uid)
        self.seg_evidence[seg_uid] = evidence
        if region.kind == "mask3d":
            series_uid = seg.get("source_series_uid")
            if not series_uid and region.instance_uid:
                series_uid = str(self.sources.get(region.instance_uid, what).SeriesInstanceUID)
            if not series_uid:
                candidates = self.sources.image_series()
                if len(candidates) != 1:
                    raise SRError(f"{what}: a volume mask needs its source series "
                                  "(seg 'source_series_uid')")
                series_uid = candidates[0]
            items = self.sources.series.get(str(series_uid)) or []
            if items:
                ordered = {str(ds.SOPInstanceUID): ds for ds, _ in _ordered_slices(items)}
                images = [hd.sr.SourceImageForSegmentation(str(ds.SOPClassUID),
                                                           str(ds.SOPInstanceUID))
                          for ds in ordered.values()]
                ref = hd.sr.ReferencedSegment(SEG_STORAGE, seg_uid, segment,
                                              source_images=images)
            else:
                ref = hd.sr.ReferencedSegment(
                    SEG_STORAGE, seg_uid, segment,
                    source_series=hd.sr.SourceSeriesForSegmentation(str(series_uid)))
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=ref, **common)
        if not region.instance_uid:
            raise SRError(f"{what}: a mask stored as SEG must name its source instance")
        header = self.sources.get(region.instance_uid, what)
        source = hd.sr.SourceImageForSegmentation(
            str(header.SOPClassUID), str(header.SOPInstanceUID),
            self.sources.frames_of(header, region.frame, what))
        ref = hd.sr.ReferencedSegmentationFrame(SEG_STORAGE, seg_uid, frame, segment, source)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=ref,
                                                                    **common)

    # findings --------------------------------------------------------------------------------

    def evaluation(self, f: FindingItem):
        import highdicom as hd

        state = STATE_CODES.get(f.state)
        if state is None:
            raise SRError(f"finding {f.label!r}: state {f.state!r} is not one of "
                          f"{tuple(STATE_CODES)}")
        return hd.sr.QualitativeEvaluation(name=self.code(f.code, f.label, "finding"),
                                           value=_concept(state))

    def finding_group(self, f: FindingItem):
        import highdicom as hd

        what = f"finding {f.label!r}"
        where = f.where or {}
        images = None
        if where.get("instance_uid"):
            header = self.sources.get(where["instance_uid"], what)
            if not _is_waveform(header.SOPClassUID):
                images = [hd.sr.SourceImageForMeasurementGroup(
                    str(header.SOPClassUID), str(header.SOPInstanceUID),
                    self.sources.frames_of(header, where.get("frame"), what))]
        key = Code.from_dict(f.code).key if isinstance(f.code, dict) else str(f.code)
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(f.label, self.doc.study_uid, self.doc.report_id,
                                          "finding", key),
            algorithm_id=_algorithm(f.model), qualitative_evaluations=[self.evaluation(f)],
            source_images=images)

    # text ------------------------------------------------------------------------------------

    def texts(self):
        import highdicom as hd

        rel = hd.sr.RelationshipTypeValues
        items = []
        for key, text in self.doc.sections.items():
            if not str(text or "").strip():
                continue
            code = SECTION_CODES.get(str(key).lower())
            if code is None:
                code = _section_code(str(key))
                self.private = True
            items.append(hd.sr.TextContentItem(name=_concept(code), value=str(text).strip(),
                                               relationship_type=rel.CONTAINS))
        if str(self.doc.reason or "").strip():
            self.private = True
            items.append(hd.sr.TextContentItem(name=_concept(REASON_CODE),
                                               value=str(self.doc.reason).strip(),
                                               relationship_type=rel.CONTAINS))
        if not items:
            return None
        container = hd.sr.ContainerContentItem(name=_concept(QUALITATIVE_EVALUATIONS),
                                               relationship_type=rel.CONTAINS)
        container.ContentSequence = hd.sr.ContentSequence(items)
        return container


def _section_code(key: str) -> Code:
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "text"
    return Code(PRIVATE_SCHEME, f"section-{slug}"[:64], key.replace("_", " ").strip().title()
                or "Text")


def _lead_key(text: str) -> str:
    """"Lead I (Einthoven)" -> "i", "Lead aVR" -> "avr", "II" -> "ii", "MLII" -> "mlii"."""
    t = re.sub(r"\(.*?\)", " ", str(text)).strip().lower()
    t = re.sub(r"^lead\s+", "", t)
    return re.sub(r"[^a-z0-9]+", "", t)


def _models(doc: ReportDocument) -> list[str]:
    seen: dict[str, None] = {}
    for model in (*doc.models, *(m.model for m in doc.measurements),
                  *(f.model for f in doc.findings), *(r.model for r in doc.regions)):
        if model:
            family, version = _split_model(model)
            seen.setdefault(f"{family}@{version}", None)
    return list(seen)


def _contributing(models: list[str]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    items = [hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name="MedGate", software_versions=_lo(medgate_version()),
        contribution_description="Report and structured report")]
    for model in models:
        family, version = _split_model(model)
        items.append(hd.ContributingEquipment(
            manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=_lo(family), software_versions=_lo(version),
            contribution_description=_lo(f"AI model {family} {version}")))
    return items


def _subject(headers: Sequence[Dataset]):
    """A specimen subject context for a slide with specimens; None (the patient) otherwise."""
    import highdicom as hd

    for header in headers:
        if "SpecimenDescriptionSequence" in header:
            try:
                return hd.sr.SubjectContext.from_image(header)
            except (ValueError, TypeError, AttributeError, KeyError):
                return None
    return None


# ---------------------------------------------------------------------------------------------
# the SR


def build_sr(doc: ReportDocument, sources: list[pydicom.Dataset] | None = None, *,
             series_uid: str | None = None, instance_number: int = 1,
             series_number: int = SR_SERIES_NUMBER,
             organization: str = MANUFACTURER) -> pydicom.Dataset:
    """The report version as a Comprehensive 3D SR following TID 1500 (see the module's
    docstring for the content tree and the choices made).

    ``sources`` are the headers of the instances the report is about (by default read from
    ``doc.sources`` without pixels); ``series_uid`` the SR series (a new one by default);
    ``organization`` the signer's organization (Verifying Organization, Person Observer's
    Organization Name). Raises ``SRError``."""
    import highdicom as hd

    if doc.state not in UNVERIFIED_STATES + VERIFIED_STATES:
        raise SRError(f"nothing to export for a {doc.state} report: an SR is written for "
                      f"{', '.join(UNVERIFIED_STATES + VERIFIED_STATES)} versions")
    verified = doc.state in VERIFIED_STATES
    if verified and (doc.signed_by is None or doc.signed_at is None):
        raise SRError(f"a {doc.state} report needs its signer and signing time")
    if sources is None:
        sources = _read_sources(doc)
    headers = [_header(s) for s in sources]
    if not headers:
        raise SRError("the report has no source instances: an SR must reference its study")
    for h in headers:
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not str(h.get(kw) or "").strip():
                raise SRError(f"a source has no {kw}")
    same = [h for h in headers if str(h.StudyInstanceUID) == doc.study_uid]
    if not same:
        raise SRError(f"none of the sources belongs to the report's study {doc.study_uid}")
    headers = same + [h for h in headers if str(h.StudyInstanceUID) != doc.study_uid]
    srcs = _Sources(headers)
    models = _models(doc)
    b = _Builder(doc, srcs)

    regions = {r.id: r for r in doc.regions}
    in_region: dict[str, list] = {r.id: [] for r in doc.regions}
    findings_in: dict[str, list] = {r.id: [] for r in doc.regions}
    loose: dict[str, list] = {}
    for m in doc.measurements:
        region_id = (m.where or {}).get("region_id")
        if region_id:
            if region_id not in regions:
                raise SRError(f"measurement {m.id or m.name!r} names region {region_id!r}, "
                              "which the report does not have")
            in_region[region_id].append(
                b.measurement(m, located=True, group_model=regions[region_id].model))
        else:
            loose.setdefault(m.model or "", []).append(
                b.measurement(m, located=False, group_model=m.model))
    own_findings = []
    for f in doc.findings:
        target = next((e for e in f.evidence if e in regions), None)
        if target is not None:
            findings_in[target].append(b.evaluation(f))
        else:
            own_findings.append(f)

    groups: list = []
    for region in doc.regions:
        groups.append(b.region_group(region, in_region[region.id], findings_in[region.id]))
    groups.extend(b.finding_group(f) for f in own_findings)
    for model, items in loose.items():
        label = "{} {} measurements".format(*_split_model(model)) if model else \
            "MedGate measurements"
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(label, doc.study_uid, doc.report_id, "measurements",
                                          model),
            algorithm_id=_algorithm(model) if model else None, measurements=items))
    if not groups:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking("MedGate report", doc.study_uid, doc.report_id,
                                          "report")))

    procedure = _concept(PROCEDURES.get(doc.domain, IMAGING_PROCEDURE))
    try:
        report = hd.sr.MeasurementReport(
            observation_context=_observer_context(doc, models, organization, _subject(headers)),
            procedure_reported=procedure, imaging_measurements=groups)
    except (TypeError, ValueError) as exc:
        raise SRError(f"highdicom could not build the measurement report: {exc}") from exc
    texts = b.texts()
    if texts is not None:
        report[0].ContentSequence.append(texts)

    texts_written = [t for t in doc.sections.values()] + [doc.reason or ""]
    texts_written += [doc.signed_by.name if doc.signed_by else "", organization]
    texts_written += [f.label for f in doc.findings] + [r.label for r in doc.regions]
    texts_written += [m.name for m in doc.measurements] + list(models) + list(doc.sections)
    texts_written += [doc.signed_by.id if doc.signed_by else ""]
    texts_written += [c.get("meaning", "") for c in
                      [f.code for f in doc.findings] + [m.code for m in doc.measurements if m.code]
                      if isinstance(c, dict)]
    extra: dict[str, Any] = {}
    charset = _charset(texts_written)
    if charset:
        extra["specific_character_set"] = charset
    if b.private:
        extra["coding_schemes"] = [_private_scheme()]
    previous = None
    if doc.predecessor:
        previous = [_predecessor(doc.predecessor)]
    attrs = _instance_attributes("MedGate", f"report {doc.report_id} v{doc.version}",
                                 series_number, instance_number, MANUFACTURER, None,
                                 f"MedGate {doc.domain.upper()} report")
    attrs.pop("content_description", None)
    attrs["series_instance_uid"] = series_uid or attrs["series_instance_uid"]
    signer = person_name(doc.signed_by.name) if verified and doc.signed_by else None
    # highdicom warns about a source's Patient's Name without a caret ("JANCT000"): the
    # source's business, copied as it is
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended "
                                "person name", category=UserWarning)
        try:
            sr = hd.sr.Comprehensive3DSR(
                evidence=headers + list(b.seg_evidence.values()),
                content=report[0],
                is_complete=verified, is_final=verified, is_verified=verified,
                verifying_observer_name=signer,
                verifying_organization=_lo(organization) if verified else None,
                previous_versions=previous,
                contributing_equipment=_contributing(models),
                content_date=doc.created_at.date(), content_time=doc.created_at.time(),
                **attrs, **extra)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise SRError(f"highdicom could not build the SR: {exc}") from exc
    _finish(sr, b.pending)
    if verified:
        sr.VerifyingObserverSequence[0].VerificationDateTime = _dt(doc.signed_at)
    if doc.accession_number:
        sr.AccessionNumber = _lo(doc.accession_number)[:16]
    return sr


def _items(items: Sequence[Dataset]):
    for item in items:
        yield item
        yield from _items(item.get("ContentSequence") or [])


def _finish(sr: Dataset, pending: dict[str, list[Dataset]]) -> None:
    """What highdicom 0.28 cannot write itself: the WAVEFORM references of ECG measurements,
    and Referenced Segmentation Frame items without Referenced Segment Number (PS3.3 C.10.5,
    Image SOP Instance Reference Macro: the segment number shall be absent when a frame number
    is given; the frame names its segment)."""
    from pydicom.sequence import Sequence as DicomSequence

    for item in _items(sr.ContentSequence):
        if item.ValueType == "NUM" and str(item.get("ObservationUID", "")) in pending:
            if "ContentSequence" not in item:
                item.ContentSequence = DicomSequence()
            item.ContentSequence.extend(pending[str(item.ObservationUID)])
        elif item.ValueType == "IMAGE":
            name = item.ConceptNameCodeSequence[0]
            if (name.CodingSchemeDesignator, _code_value(name)) == ("DCM", "121214"):
                for ref in item.ReferencedSOPSequence:
                    if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                        del ref.ReferencedSegmentNumber


def _predecessor(ref: dict[str, str]) -> Dataset:
    ds = Dataset()
    keys = {"study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
            "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID"}
    for key, keyword in keys.items():
        value = str(ref.get(key) or "").strip()
        if not value:
            if key == "sop_class_uid":
                value = COMPREHENSIVE_3D_SR
            else:
                raise SRError(f"the predecessor reference needs {key!r}")
        setattr(ds, keyword, value)
    return ds


# ---------------------------------------------------------------------------------------------
# reading back


def _code_value(item: Dataset) -> str:
    """A code's value, short (CodeValue), long (LongCodeValue) or URN."""
    for kw in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        if kw in item:
            return str(item.get(kw))
    return ""


def _read(ds: Dataset | str | Path | bytes):
    import highdicom as hd

    if isinstance(ds, (str, Path)):
        ds = pydicom.dcmread(ds)
    elif isinstance(ds, (bytes, bytearray)):
        ds = pydicom.dcmread(io.BytesIO(bytes(ds)))
    classes = {"1.2.840.10008.5.1.4.1.1.88.22": hd.sr.EnhancedSR,
               "1.2.840.10008.5.1.4.1.1.88.33": hd.sr.ComprehensiveSR,
               COMPREHENSIVE_3D_SR: hd.sr.Comprehensive3DSR}
    cls = classes.get(str(ds.get("SOPClassUID", "")))
    if cls is None:
        raise SRError(f"not an SR highdicom reads: SOP class {ds.get('SOPClassUID')}")
    return cls.from_dataset(_without_waveforms(ds), copy=False)


def _without_waveforms(ds: Dataset) -> Dataset:
    """A copy of an SR without its WAVEFORM content items, which highdicom 0.28's content
    parser cannot read (a TCOORD that selected from one stays, without its child)."""
    import copy

    out = copy.deepcopy(ds)
    for item in [out, *_items(out.ContentSequence)]:
        seq = item.get("ContentSequence")
        if seq is not None and any(c.ValueType == "WAVEFORM" for c in seq):
            kept = [c for c in seq if c.ValueType != "WAVEFORM"]
            if kept:
                item.ContentSequence = kept
            else:
                del item.ContentSequence
    return out


def sr_summary(ds: Dataset | str | Path | bytes) -> dict[str, Any]:
    """What an SR written by ``build_sr`` states, read back with highdicom: {"findings": [(code
    value, state)], "measurements": [(name meaning, value, unit)], "completion",
    "verification", "preliminary", "observer_person" (PN text or None), "verifying_observer",
    "verification_datetime", "device_observers": [{"uid", "name", "manufacturer",
    "model_name"}], "procedure": [code values], "texts": {section key: text}, "predecessor"
    (SOP Instance UID or None), "sop_instance_uid", "series_uid", "study_uid"}."""
    from pydicom.sr.codedict import codes

    sr = _read(ds)
    report = sr.content
    out: dict[str, Any] = {
        "sop_instance_uid": str(sr.SOPInstanceUID), "series_uid": str(sr.SeriesInstanceUID),
        "study_uid": str(sr.StudyInstanceUID), "completion": str(sr.CompletionFlag),
        "verification": str(sr.VerificationFlag),
        "preliminary": str(sr.get("PreliminaryFlag", "")) or None,
        "findings": [], "measurements": [], "device_observers": [], "observer_person": None,
        "verifying_observer": None, "verification_datetime": None, "texts": {},
        "procedure": [], "predecessor": None}
    verifying = sr.get("VerifyingObserverSequence") or []
    if verifying:
        out["verifying_observer"] = str(verifying[0].VerifyingObserverName)
        out["verification_datetime"] = str(verifying[0].VerificationDateTime)
    predecessors = sr.get("PredecessorDocumentsSequence") or []
    for study in predecessors:
        for series in study.ReferencedSeriesSequence:
            for inst in series.ReferencedSOPSequence:
                out["predecessor"] = out["predecessor"] or str(inst.ReferencedSOPInstanceUID)
    if not hasattr(report, "get_observer_contexts"):
        return out
    for context in report.get_observer_contexts():
        attrs = context.observer_identifying_attributes
        if context.observer_type == codes.DCM.Person:
            out["observer_person"] = str(attrs.name)
        else:
            out["device_observers"].append({
                "uid": str(attrs.uid), "name": attrs.name,
                "manufacturer": attrs.manufacturer_name, "model_name": attrs.model_name})
    groups = [*report.get_planar_roi_measurement_groups(),
              *report.get_volumetric_roi_measurement_groups(),
              *report.get_image_measurement_groups()]
    for group in groups:
        for ev in group.get_qualitative_evaluations():
            out["findings"].append((ev.name.value, _STATE_BY_VALUE.get(ev.value.value,
                                                                         ev.value.meaning)))
        for m in group.get_measurements():
            out["measurements"].append((m.name.meaning, float(m.value), m.unit.value))
    root = report[0]
    by_code = {(c.scheme, c.value): key for key, c in SECTION_CODES.items()}
    by_code[("DCM", "121075")] = "recommendation"
    for item in root.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if (name.CodingSchemeDesignator, _code_value(name)) == ("DCM", "121058"):
            out["procedure"].append(_code_value(item.ConceptCodeSequence[0]))
        if (name.CodingSchemeDesignator, _code_value(name)) != (
                QUALITATIVE_EVALUATIONS.scheme_designator, QUALITATIVE_EVALUATIONS.value):
            continue
        for text in item.get("ContentSequence") or []:
            if text.ValueType != "TEXT":
                continue
            code = text.ConceptNameCodeSequence[0]
            value = _code_value(code)
            pair = (code.CodingSchemeDesignator, value)
            if pair == (REASON_CODE.scheme, REASON_CODE.value):
                key = "reason"
            elif pair in by_code:
                key = by_code[pair]
            elif value.startswith("section-"):
                key = value[len("section-"):].replace("-", "_")
            else:
                key = code.CodeMeaning
            out["texts"][key] = str(text.TextValue)
    return out


__all__ = ["SRError", "build_sr", "sr_summary", "person_name", "device_uid", "PROCEDURES",
           "STATE_CODES", "SECTION_CODES"]
