"""A report version as FHIR R4: one ``Bundle`` (type ``collection``) holding a
``DiagnosticReport``, an ``Observation`` per finding and per measurement, the ``ImagingStudy``
they come from, the ``Patient``, the signing ``Practitioner`` and a ``Device`` per model version.

Why a ``collection`` and not a ``document``: a FHIR document needs a ``Composition`` first and
carries attestation semantics of its own; a collection is the plain set of resources a receiver
stores one by one (or turns into a ``transaction`` by adding ``request`` entries, one ``PUT
Type/id`` each; the ids are chosen for that).

Ids are deterministic, so exporting the same version twice gives the same bundle:

- the ``DiagnosticReport`` is ``medgate-{report_id}`` for every version of a report, with
  ``meta.versionId`` the version number: an amendment, a correction or a withdrawal is an update
  of the same resource, as FHIR expects of ``amended`` / ``corrected`` / ``entered-in-error``;
- its Observations are per version (``medgate-{report_id}-{version}-finding-{n}``,
  ``...-measurement-{n}``), since the findings of two versions need not match;
- the ImagingStudy, Devices and Practitioner are named by what they are (study UID, model
  ``family@version``, staff number), so they are the same resource in every report;
- the Patient is per report (``medgate-{report_id}-patient``): its id is never a hash of a
  patient identifier.

``fullUrl`` is ``urn:uuid:<uuid5 of Type/id>`` or, given ``base_url``, ``{base_url}/Type/id``;
every reference is the ``fullUrl`` of its target, so all of them resolve inside the bundle.

fhir.resources 8 ships FHIR R5 (default), R4B and STU3, not R4. R4B (4.3.0) keeps the R4
(4.0.1) structure of every resource written here, so the bundle is R4 content and ``validate``
checks it with the R4B classes; nothing R4B-only or R5-only is written.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from app.export.document import FindingItem, MeasurementItem, Person, ReportDocument
from app.reports.lifecycle import FHIR_STATUS, SIGNED
from models.base import Code, ContractError

FHIR_VERSION = "4.0.1"
MEDIA_TYPE = "application/fhir+json; fhirVersion=4.0"


class FhirError(ValueError):
    """A report version that cannot be written as FHIR, or a bundle that is not valid R4."""


# Coding scheme designators (models.base.SCHEMES) -> FHIR code system URIs. RadLex is
# http://radlex.org as HL7 Terminology (THO) registers it; 99MEDGATE is MedGate's own scheme.
SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "RADLEX": "http://radlex.org",
    "99MEDGATE": "urn:medgate:codes",
}
UCUM = SYSTEMS["UCUM"]
DICOM_UID = "urn:dicom:uid"
MEDGATE_REPORT = "urn:medgate:report"
MEDGATE_MODEL = "urn:medgate:model"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
RFC3986 = "urn:ietf:rfc:3986"

# The states that become a full report; a withdrawn one becomes a DiagnosticReport alone.
EXPORTABLE = ("draft", "edited", "final", "amended", "corrected")
WITHDRAWN = ("cancelled", "entered_in_error")

# Finding state -> value, DICOM CID 240 "Present-Absent" (the same concepts an SR writes).
PRESENCE = {
    "present": ("52101004", "Present"),
    "absent": ("272519000", "Absent"),
    "uncertain": ("373068000", "Undetermined"),
}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


# Per domain: the DiagnosticReport categories (HL7 v2 table 0074 and the LOINC category US Core
# uses), its LOINC code, a title, the Observation category and the modality by default.
DOMAINS: dict[str, dict[str, Any]] = {
    "cxr": {"category": [_coding(V2_0074, "RAD", "Radiology"),
                         _coding(SYSTEMS["LN"], "LP29684-5", "Radiology")],
            "code": _coding(SYSTEMS["LN"], "18748-4", "Diagnostic imaging study"),
            "title": "Chest X-ray report", "observation": "imaging", "modality": "DX"},
    "ct": {"category": [_coding(V2_0074, "RAD", "Radiology"),
                        _coding(SYSTEMS["LN"], "LP29684-5", "Radiology")],
           "code": _coding(SYSTEMS["LN"], "18748-4", "Diagnostic imaging study"),
           "title": "CT report", "observation": "imaging", "modality": "CT"},
    # the EC display is THO's own text, double space included
    "ecg": {"category": [_coding(V2_0074, "EC", "Electrocardiac (e.g., EKG,  EEC, Holter)"),
                         _coding(SYSTEMS["LN"], "LP29708-2", "Cardiology")],
            "code": _coding(SYSTEMS["LN"], "11524-6", "EKG study"),
            "title": "ECG report", "observation": "procedure", "modality": "ECG"},
    "pathology": {"category": [_coding(V2_0074, "PAT",
                                       "Pathology (gross & histopath, not surgical)"),
                               _coding(SYSTEMS["LN"], "LP7839-6", "Pathology")],
                  "code": _coding(SYSTEMS["LN"], "11526-1", "Pathology study"),
                  "title": "Pathology report", "observation": "laboratory", "modality": "SM"},
}

# SOP Class UID -> DICOM modality (CID 29 codes) for the ImagingStudy series.
SOP_MODALITY = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "CT",
    "1.2.840.10008.5.1.4.1.1.9.1.1": "ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "ECG",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "SM",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
}
MODALITY_MEANING = {"CR": "Computed Radiography", "DX": "Digital Radiography",
                    "CT": "Computed Tomography", "ECG": "Electrocardiography",
                    "SM": "Slide Microscopy", "SEG": "Segmentation", "SR": "SR Document"}
_OBS_CATEGORY_DISPLAY = {"imaging": "Imaging", "procedure": "Procedure",
                         "laboratory": "Laboratory"}
_UNIT_DISPLAY = {"[hnsf'U]": "HU"}
_DICOM_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:fhir")
_SECTION_ORDER = ("technique", "findings", "impression")
_PATIENT_KEYS = {"id", "name", "system"}


def report_text(doc: ReportDocument) -> str:
    """The plain text of a version as ``presentedForm`` carries it: its sections (technique,
    findings, impression, then any others) under headings, the reason of an amendment or a
    correction, and who signed it, or that it is not yet verified."""
    names = [s for s in _SECTION_ORDER if s in doc.sections]
    names += [s for s in doc.sections if s not in _SECTION_ORDER]
    parts = [f"{name.replace('_', ' ').capitalize()}:\n{doc.sections[name].strip()}"
             for name in names if str(doc.sections[name] or "").strip()]
    if doc.state in ("amended", "corrected") and doc.reason:
        what = "amendment" if doc.state == "amended" else "correction"
        parts.append(f"Reason for {what}: {doc.reason.strip()}")
    if doc.state in SIGNED and doc.signed_by is not None:
        when = f" on {_instant(doc.signed_at)}" if doc.signed_at else ""
        parts.append(f"Signed by {doc.signed_by.name}{when}.")
    elif doc.state in ("draft", "edited"):
        parts.append("Preliminary: AI-assisted draft, not verified by a clinician.")
    return "\n\n".join(parts) + "\n"


def where_text(where: dict[str, Any]) -> str:
    """Where a measurement or finding was taken, in words: "lead II", "series 1.2.3, slices
    3-10 (0-based)", "instance 1.2.4, frame 1", "region r1", "0.5-1.2 s"."""
    parts: list[str] = []
    if where.get("lead"):
        parts.append(f"lead {where['lead']}")
    if where.get("beats"):
        parts.append("beats " + ", ".join(str(b) for b in where["beats"]))
    if where.get("series_uid"):
        parts.append(f"series {where['series_uid']}")
    if where.get("slices"):
        first, last = where["slices"]
        parts.append(f"slices {first}-{last} (0-based)")
    elif where.get("slice_index") is not None:
        parts.append(f"slice {where['slice_index']} (0-based)")
    if where.get("instance_uid"):
        frame = f", frame {where['frame']}" if where.get("frame") is not None else ""
        parts.append(f"instance {where['instance_uid']}{frame}")
    if where.get("region_id"):
        parts.append(f"region {where['region_id']}")
    start, end = where.get("start_s"), where.get("end_s")
    if start is not None and end is not None:
        parts.append(f"{start:g}-{end:g} s")
    elif start is not None:
        parts.append(f"from {start:g} s")
    return ", ".join(parts)


def diagnostic_report(doc: ReportDocument, *, base_url: str | None = None,
                      patient: dict[str, Any] | None = None) -> dict[str, Any]:
    """The FHIR R4 ``Bundle`` (type ``collection``) of one report version, validated.

    ``patient``: {"id": the patient identifier (e.g. DICOM PatientID), "system": its identifier
    system (optional), "name": (optional)}; only what is given is written. Without it the
    Patient entry carries no identifier and the receiver matches on the ImagingStudy.

    States draft, edited, final, amended and corrected give the whole report; cancelled and
    entered_in_error give a DiagnosticReport with that status and no results, text or
    conclusion (withdrawing what an earlier export of the same report sent); pending (nothing
    reported yet) and anything else raise ``FhirError``."""
    bundle = _Builder(doc, base_url, patient).bundle()
    validate(bundle)
    return bundle


class _Builder:
    def __init__(self, doc: ReportDocument, base_url: str | None,
                 patient: dict[str, Any] | None) -> None:
        if doc.state not in EXPORTABLE + WITHDRAWN:
            raise FhirError(f"a report in state {doc.state!r} is not exported as FHIR; "
                            f"exportable: {', '.join(EXPORTABLE + WITHDRAWN)}")
        if doc.domain not in DOMAINS:
            raise FhirError(f"no FHIR mapping for domain {doc.domain!r}; "
                            f"known: {', '.join(DOMAINS)}")
        if not _DICOM_UID.match(doc.study_uid or "") or len(doc.study_uid) > 64:
            raise FhirError(f"study UID {doc.study_uid!r} is not a DICOM UID")
        if patient is not None:
            if not isinstance(patient, dict):
                raise FhirError("patient must be a dict with 'id' and optional 'name', 'system'")
            unknown = sorted(set(patient) - _PATIENT_KEYS)
            if unknown:
                raise FhirError(f"unknown patient field(s) {unknown}; "
                                f"allowed: {sorted(_PATIENT_KEYS)}")
        self.doc = doc
        self.domain = DOMAINS[doc.domain]
        self.base = base_url.rstrip("/") if base_url else None
        self.patient = patient
        self.entries: list[dict[str, Any]] = []
        self.devices: dict[str, str] = {}  # "family@version" -> reference
        signed = doc.state in SIGNED
        self.issued = _instant(doc.signed_at if signed and doc.signed_at else doc.created_at)
        study_time = doc.extra.get("study_datetime")
        self.effective = (_instant(study_time) if isinstance(study_time, datetime)
                          else _instant(doc.created_at))
        self.obs_status = "final" if signed else "preliminary"

    # -- references -------------------------------------------------------------------------

    def full_url(self, rtype: str, rid: str) -> str:
        if self.base:
            return f"{self.base}/{rtype}/{rid}"
        return f"urn:uuid:{uuid.uuid5(_NS, f'{rtype}/{rid}')}"

    def add(self, resource: dict[str, Any]) -> dict[str, str]:
        url = self.full_url(resource["resourceType"], resource["id"])
        self.entries.append({"fullUrl": url, "resource": resource})
        return {"reference": url, "type": resource["resourceType"]}

    # -- the bundle -------------------------------------------------------------------------

    def bundle(self) -> dict[str, Any]:
        doc = self.doc
        self.subject = self.add(self._patient())
        self.study = self.add(self._imaging_study())
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "id": f"medgate-{doc.report_id}",
            "meta": {"versionId": str(doc.version)},
            "identifier": [{"system": MEDGATE_REPORT, "value": str(doc.report_id)}],
            "status": FHIR_STATUS[doc.state],
            "category": [{"coding": [dict(c) for c in self.domain["category"]]}],
            "code": {"coding": [dict(self.domain["code"])], "text": self.domain["title"]},
            "subject": dict(self.subject),
            "effectiveDateTime": self.effective,
            "issued": self.issued,
            "imagingStudy": [dict(self.study)],
        }
        if doc.accession_number:
            report["basedOn"] = [{"type": "ServiceRequest",
                                  "identifier": _accession(doc.accession_number)}]
        # the report comes first; the resources it names follow
        self.entries.insert(0, {"fullUrl": self.full_url("DiagnosticReport", report["id"]),
                                "resource": report})
        if doc.state in EXPORTABLE:
            results = self._observations()
            if results:
                report["result"] = results
            if doc.state in SIGNED and doc.signed_by is not None:
                report["resultsInterpreter"] = [self.add(self._practitioner(doc.signed_by))]
            impression = str(doc.sections.get("impression") or "").strip()
            if impression:
                report["conclusion"] = impression
            report["presentedForm"] = [self._presented_form()]
        return {
            "resourceType": "Bundle",
            "id": f"medgate-{doc.report_id}-{doc.version}",
            "identifier": {"system": MEDGATE_REPORT,
                           "value": f"{doc.report_id}/{doc.version}"},
            "type": "collection",
            "timestamp": self.issued,
            "entry": self.entries,
        }

    def _patient(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "Patient",
                               "id": f"medgate-{self.doc.report_id}-patient"}
        p = self.patient or {}
        if str(p.get("id") or "").strip():
            ident = {"value": str(p["id"]).strip()}
            if p.get("system"):
                ident = {"system": str(p["system"]), **ident}
            out["identifier"] = [ident]
        if str(p.get("name") or "").strip():
            out["name"] = [_human_name(str(p["name"]))]
        return out

    def _imaging_study(self) -> dict[str, Any]:
        doc = self.doc
        identifiers: list[dict[str, Any]] = [
            {"use": "official", "system": DICOM_UID, "value": f"urn:oid:{doc.study_uid}"}]
        if doc.accession_number:
            identifiers.append({"use": "usual", **_accession(doc.accession_number)})
        series: dict[str, dict[str, Any]] = {}
        for src in doc.sources:
            for what, uid in (("series", src.series_uid), ("SOP instance", src.sop_instance_uid),
                              ("SOP class", src.sop_class_uid)):
                if not _DICOM_UID.match(uid or "") or len(uid) > 64:
                    raise FhirError(f"source {what} UID {uid!r} is not a DICOM UID")
            modality = SOP_MODALITY.get(src.sop_class_uid, self.domain["modality"])
            s = series.setdefault(src.series_uid, {
                "uid": src.series_uid,
                "modality": _coding(SYSTEMS["DCM"], modality,
                                    MODALITY_MEANING.get(modality, modality)),
                "instance": []})
            if all(i["uid"] != src.sop_instance_uid for i in s["instance"]):
                s["instance"].append({"uid": src.sop_instance_uid,
                                      "sopClass": {"system": RFC3986,
                                                   "code": f"urn:oid:{src.sop_class_uid}"}})
        for s in series.values():
            s["numberOfInstances"] = len(s["instance"])
        modalities: dict[str, dict[str, str]] = {}
        for s in series.values():
            modalities.setdefault(s["modality"]["code"], dict(s["modality"]))
        out: dict[str, Any] = {
            "resourceType": "ImagingStudy",
            "id": str(uuid.uuid5(_NS, f"study/{doc.study_uid}")),
            "identifier": identifiers,
            "status": "available",
            "subject": dict(self.subject),
            "numberOfSeries": len(series),
            "numberOfInstances": sum(len(s["instance"]) for s in series.values()),
        }
        if modalities:
            out["modality"] = list(modalities.values())
        if series:
            out["series"] = list(series.values())
        return out

    def _practitioner(self, person: Person) -> dict[str, Any]:
        key = person.id.strip() or person.name.strip()
        out: dict[str, Any] = {"resourceType": "Practitioner",
                               "id": str(uuid.uuid5(_NS, f"practitioner/{key}"))}
        if person.id.strip():
            out["identifier"] = [{"value": person.id.strip()}]
        if person.name.strip():
            out["name"] = [_human_name(person.name)]
        return out

    def _device(self, model: str) -> dict[str, str] | None:
        model = (model or "").strip()
        if not model:
            return None
        if model not in self.devices:
            family, _, version = model.partition("@")
            device: dict[str, Any] = {
                "resourceType": "Device",
                "id": str(uuid.uuid5(_NS, f"device/{model}")),
                "identifier": [{"system": MEDGATE_MODEL, "value": model}],
                "deviceName": [{"name": family, "type": "model-name"}],
                "type": {"text": "AI model"},
            }
            if version:
                device["version"] = [{"value": version}]
            self.devices[model] = self.add(device)["reference"]
        return {"reference": self.devices[model], "type": "Device"}

    def _observation(self, kind: str, n: int, code: dict[str, Any]) -> dict[str, Any]:
        doc = self.doc
        category = self.domain["observation"]
        return {
            "resourceType": "Observation",
            "id": f"medgate-{doc.report_id}-{doc.version}-{kind}-{n}",
            "status": self.obs_status,
            "category": [{"coding": [_coding(OBSERVATION_CATEGORY, category,
                                             _OBS_CATEGORY_DISPLAY[category])]}],
            "code": code,
            "subject": dict(self.subject),
            "effectiveDateTime": self.effective,
            "issued": self.issued,
        }

    def _observations(self) -> list[dict[str, str]]:
        for model in self.doc.models:
            self._device(model)
        measured: list[tuple[MeasurementItem, dict[str, str]]] = []
        entries: list[dict[str, Any]] = []
        for n, m in enumerate(self.doc.measurements, 1):
            obs = self._measurement(n, m)
            ref = {"reference": self.full_url("Observation", obs["id"]), "type": "Observation"}
            measured.append((m, ref))
            entries.append(obs)
        findings = [self._finding(n, f, measured) for n, f in enumerate(self.doc.findings, 1)]
        refs = [self.add(obs) for obs in findings + entries]
        return refs

    def _measurement(self, n: int, m: MeasurementItem) -> dict[str, Any]:
        if not isinstance(m.value, int | float) or not math.isfinite(m.value):
            raise FhirError(f"measurement {m.name!r} has a non-finite value {m.value!r}")
        if not m.unit:
            raise FhirError(f"measurement {m.name!r} has no unit")
        code = m.code or {"scheme": "99MEDGATE", "value": m.name,
                          "meaning": m.name.replace("_", " ")}
        obs = self._observation("measurement", n, _codeable(code, None, what=m.name))
        obs["valueQuantity"] = {"value": m.value, "unit": _UNIT_DISPLAY.get(m.unit, m.unit),
                                "system": UCUM, "code": m.unit}
        obs["derivedFrom"] = [dict(self.study)]
        device = self._device(m.model)
        if device:
            obs["device"] = device
        where = where_text(m.where or {})
        if where:
            obs["note"] = [{"text": f"Measured at: {where}"}]
        return obs

    def _finding(self, n: int, f: FindingItem,
                 measured: list[tuple[MeasurementItem, dict[str, str]]]) -> dict[str, Any]:
        if f.state not in PRESENCE:
            raise FhirError(f"finding {f.label!r}: state {f.state!r} is not one of "
                            f"{', '.join(PRESENCE)}")
        obs = self._observation("finding", n, _codeable(f.code, f.label, what=f.label))
        value, meaning = PRESENCE[f.state]
        obs["valueCodeableConcept"] = {"coding": [_coding(SYSTEMS["SCT"], value, meaning)],
                                       "text": meaning}
        derived: list[dict[str, str]] = []
        regions: list[str] = []
        for evidence in f.evidence:
            same = [ref for m, ref in measured if m.id == evidence and m.model == f.model]
            ref = (same or [ref for m, ref in measured if m.id == evidence] or [None])[0]
            if ref is not None:
                if ref not in derived:
                    derived.append(ref)
            else:
                regions.append(evidence)
        obs["derivedFrom"] = [*(dict(r) for r in derived), dict(self.study)]
        device = self._device(f.model)
        if device:
            obs["device"] = device
        notes = []
        if f.criteria.strip():
            notes.append(f"Criteria: {f.criteria.strip()}")
        where = where_text(f.where or {})
        if where:
            notes.append(f"Location: {where}")
        if regions:
            notes.append("Regions: " + "; ".join(self._region_text(r) for r in regions))
        if f.knowledge:
            notes.append("Knowledge: " + ", ".join(f.knowledge))
        if notes:
            obs["note"] = [{"text": t} for t in notes]
        return obs

    def _region_text(self, rid: str) -> str:
        for r in self.doc.regions:
            if r.id == rid:
                bits = [r.kind]
                if r.label:
                    bits.insert(0, r.label)
                if r.instance_uid:
                    frame = f" frame {r.frame}" if r.frame is not None else ""
                    bits.append(f"instance {r.instance_uid}{frame}")
                if r.seg and r.seg.get("sop_instance_uid"):
                    bits.append(f"SEG {r.seg['sop_instance_uid']}")
                return f"{rid} ({', '.join(bits)})"
        return rid

    def _presented_form(self) -> dict[str, Any]:
        data = report_text(self.doc).encode("utf-8")
        return {"contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(data).decode("ascii"),
                "size": len(data),
                "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
                "title": f"{self.domain['title']}, version {self.doc.version} "
                         f"({self.doc.state.replace('_', ' ')})",
                "creation": self.issued}


def _instant(value: datetime) -> str:
    """A FHIR instant: a naive time is taken as UTC."""
    if not isinstance(value, datetime):
        raise FhirError(f"expected a datetime, not {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")


def _accession(accession: str) -> dict[str, Any]:
    return {"type": {"coding": [_coding(V2_0203, "ACSN", "Accession ID")]}, "value": accession}


def _human_name(name: str) -> dict[str, Any]:
    """A HumanName: the text as given; a DICOM PN ("Doe^Jane") also split into its parts."""
    name = name.strip()
    if "^" not in name:
        return {"text": name}
    family, given, middle, prefix, suffix = (name.split("^") + [""] * 5)[:5]
    out: dict[str, Any] = {"text": " ".join(p for p in (prefix, given, middle, family, suffix)
                                            if p)}
    if family:
        out["family"] = family
    if given or middle:
        out["given"] = [p for p in (given, middle) if p]
    if prefix:
        out["prefix"] = [prefix]
    if suffix:
        out["suffix"] = [suffix]
    return out


def _codeable(code: dict[str, Any], text: str | None, *, what: str) -> dict[str, Any]:
    try:
        c = Code.from_dict(code)
    except ContractError as exc:
        raise FhirError(f"{what!r}: {exc}") from None
    return {"coding": [_coding(SYSTEMS[c.scheme], c.value, c.meaning)],
            "text": (text or c.meaning).strip() or c.meaning}


# -- validation -------------------------------------------------------------------------------

# Status codes of R4's required bindings where the R4B classes list only part of them.
_STATUS_CODES = {
    "DiagnosticReport": {"registered", "partial", "preliminary", "final", "amended",
                         "corrected", "appended", "cancelled", "entered-in-error", "unknown"},
    "Observation": {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                    "entered-in-error", "unknown"},
}


def validate(bundle: dict[str, Any]) -> None:
    """Check a bundle against FHIR R4 (fhir.resources' R4B classes, whose structure R4 shares):
    the bundle and every entry's resource parse with their classes; fullUrls are present and
    unique; every reference inside the bundle resolves (``urn:uuid:`` ones must) and names a
    resource type its element allows; coded elements with a required binding hold one of its
    codes. Raises ``FhirError`` naming the first problem."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle

    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError("not a FHIR Bundle (resourceType must be 'Bundle')")
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise FhirError(f"Bundle is not valid FHIR R4: {_errors(exc)}") from None
    kinds = Bundle.model_fields["type"].json_schema_extra["enum_values"]  # type: ignore[index]
    if bundle.get("type") not in kinds:
        raise FhirError(f"Bundle.type {bundle.get('type')!r} is not one of {kinds}")
    types: dict[str, str] = {}
    parsed: list[tuple[str, BaseModel]] = []
    for n, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            raise FhirError(f"entry {n} has no resource")
        rtype = str(resource.get("resourceType"))
        where = f"entry {n} ({rtype}/{resource.get('id')})"
        try:
            cls = get_fhir_model_class(rtype)
        except ValueError:
            raise FhirError(f"{where}: {rtype!r} is not a FHIR resource type") from None
        try:
            model = cls.model_validate(resource)
        except ValidationError as exc:
            raise FhirError(f"{where} is not a valid {rtype}: {_errors(exc)}") from None
        url = entry.get("fullUrl")
        if not url:
            raise FhirError(f"{where} has no fullUrl")
        if url in types:
            raise FhirError(f"{where}: fullUrl {url} is used twice")
        types[url] = rtype
        allowed = _STATUS_CODES.get(rtype)
        if allowed is not None and resource.get("status") not in allowed:
            raise FhirError(f"{where}: status {resource.get('status')!r} is not one of "
                            f"{sorted(allowed)}")
        parsed.append((where, model))
    for where, model in parsed:
        for path, extra, value in _walk(model, ""):
            targets = extra.get("enum_reference_types")
            if targets and isinstance(value, BaseModel):
                _check_reference(f"{where}{path}", value, targets, types)
            codes = extra.get("enum_values")
            if codes and "+" not in codes and isinstance(value, str) and value not in codes:
                raise FhirError(f"{where}{path}: {value!r} is not one of {codes}")


def _walk(model: BaseModel, path: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    for name, info in type(model).model_fields.items():
        if name.endswith("__ext") or name == "fhir_comments":
            continue
        value = getattr(model, name, None)
        if value is None:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            sub = f"{path}.{name}" + (f"[{i}]" if isinstance(value, list) else "")
            yield sub, extra, item
            if isinstance(item, BaseModel):
                yield from _walk(item, sub)


def _check_reference(where: str, ref: BaseModel, targets: list[str],
                     types: dict[str, str]) -> None:
    reference = getattr(ref, "reference", None)
    declared = getattr(ref, "type", None)
    if not reference:
        if declared and "Resource" not in targets and declared not in targets:
            raise FhirError(f"{where}: a {declared} may not be referenced here; "
                            f"allowed: {', '.join(targets)}")
        return
    target = types.get(reference)
    if target is None:
        relative = [t for url, t in types.items() if url.endswith("/" + reference)]
        if relative:
            target = relative[0]
        elif reference.startswith(("urn:", "#")):
            raise FhirError(f"{where}: reference {reference} does not resolve in the bundle")
        else:  # outside the bundle: [base/]Type/id[/_history/v]
            segments = reference.split("/_history/")[0].rstrip("/").split("/")
            target = segments[-2] if len(segments) >= 2 else None
    if target and "Resource" not in targets and target not in targets:
        raise FhirError(f"{where}: reference {reference} is a {target}; "
                        f"allowed: {', '.join(targets)}")
    if declared and target and declared != target:
        raise FhirError(f"{where}: reference {reference} says type {declared} but is a {target}")


def _errors(exc: ValidationError, limit: int = 3) -> str:
    errors = exc.errors()
    out = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:limit])
    more = len(errors) - limit
    return out + (f" (and {more} more)" if more > 0 else "")
