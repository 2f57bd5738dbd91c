"""What a C-MOVE or C-GET identifier asks for, and the stored instances that answer it.

A retrieve identifier (PS3.4 C.4.2.2.1 for C-MOVE, C.4.3.2.1 for C-GET; baseline hierarchical
retrieve, C.4.2.1.4 / C.4.3.1.3) holds the Query/Retrieve Level and the *unique keys* of that
level and the levels above it:

=========  ============================  ======================================
level      Study Root                    Patient Root
=========  ============================  ======================================
PATIENT    (not a Study Root level)      PatientID
STUDY      StudyInstanceUID              PatientID, StudyInstanceUID
SERIES     + SeriesInstanceUID           + SeriesInstanceUID
IMAGE      + SOPInstanceUID              + SOPInstanceUID
=========  ============================  ======================================

The key of the requested level is required and may be a list of UIDs (``\\``-separated); the
keys above it are optional here (a relational peer may leave them out) and single-valued, and
when present they narrow the match. Empty elements are ignored. A non-empty element that is not
one of these keys is refused rather than ignored: retrieving more than the requestor meant (all
of a study when it also said ``Modality=SR``) is worse than telling it so. Patient Root also
takes IssuerOfPatientID beside PatientID, as MedGate's patients are (PatientID, issuer) pairs.

Matching is :mod:`app.dicom.query`'s, the code C-FIND and QIDO-RS use, at the requested level;
the matches are then expanded to their instances, MedGate's own derived series (SR, SEG,
annotations) included: they are ordinary rows of the index. This module reads the index only; it
never opens a file or talks to the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy.orm import Session

from app.dicom import query

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
LEVEL_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
             "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"})
# Elements of an identifier that are not keys (PS3.4 C.4.2.2.1: these may accompany them).
NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC",
                      "QueryRetrieveView"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class RetrieveError(ValueError):
    """An identifier that does not fit the information model: 0xA900 *Identifier does not
    match SOP Class* (PS3.4 Table C.4-2 / C.4-3)."""


@dataclass(frozen=True)
class Request:
    level: str
    keys: dict[str, list[str]]  # keyword -> values (a list only at the requested level)


@dataclass(frozen=True)
class Item:
    """One stored instance to send: what a C-STORE sub-operation needs."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str  # relative to the store folder


def allowed_keys(level: str, patient_root: bool) -> list[str]:
    """The unique keys of ``level`` and the levels above it, top first."""
    top = 0 if patient_root else 1
    keys = [LEVEL_KEY[lv] for lv in LEVELS[top:LEVELS.index(level) + 1]]
    return (["IssuerOfPatientID", *keys]) if patient_root else keys


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out: list[str] = []
    for item in items:
        out.extend(v.strip(" \x00") for v in str(item).split("\\"))
    return [v for v in out if v]


def parse_identifier(identifier: Dataset, patient_root: bool) -> Request:
    """The level and unique keys of a C-MOVE/C-GET identifier, or RetrieveError."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    levels = LEVELS if patient_root else LEVELS[1:]
    if level not in levels:
        raise RetrieveError(f"QueryRetrieveLevel must be one of {', '.join(levels)}")
    allowed = allowed_keys(level, patient_root)
    keys: dict[str, list[str]] = {}
    for elem in identifier:
        kw = elem.keyword
        if elem.tag.is_private or elem.tag.group in (0x0000, 0x0002) or kw in NOT_KEYS:
            continue
        if elem.VR == "SQ":
            if elem.value:
                raise RetrieveError(f"{kw or elem.tag} is not a retrieve key")
            continue
        values = _values(elem)
        if not values:
            continue  # an empty element matches nothing and narrows nothing
        if kw not in allowed:
            raise RetrieveError(f"{kw or elem.tag} is not a unique key at {level} level; "
                                f"keys: {', '.join(allowed)}")
        if len(values) > 1 and kw != LEVEL_KEY[level]:
            raise RetrieveError(f"{kw} takes one value above the retrieve level")
        for v in values:
            if kw in UID_KEYS and (not _UID.match(v) or len(v) > 64):
                raise RetrieveError(f"{kw} is not a valid UID (PS3.5 9.1)")
            if kw not in UID_KEYS and ("*" in v or "?" in v):
                raise RetrieveError(f"{kw} is matched as a single value; no wildcards")
        keys[kw] = values
    if LEVEL_KEY[level] not in keys:
        raise RetrieveError(f"{LEVEL_KEY[level]} is required at {level} level")
    return Request(level, keys)


def matching_instances(session: Session, request: Request) -> list[Item]:
    """The stored instances the request names, in study, series and instance order."""
    filters = {kw: "\\".join(values) for kw, values in request.keys.items()}
    items: dict[str, Item] = {}
    if request.level == "IMAGE":
        for m in query.search(session, query.Query("INSTANCE", filters)):
            items.setdefault(m["SOPInstanceUID"], Item(
                m["SOPClassUID"], m["SOPInstanceUID"], m["AvailableTransferSyntaxUID"],
                m["_path"]))
        return list(items.values())
    level = "SERIES" if request.level == "SERIES" else "STUDY"
    for m in query.search(session, query.Query(level, filters)):
        series = m.get("SeriesInstanceUID") if level == "SERIES" else None
        for inst in query.instances_for(session, m["StudyInstanceUID"], series):
            items.setdefault(inst.sop_instance_uid, Item(
                inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax_uid, inst.path))
    return list(items.values())


__all__ = ["Request", "Item", "RetrieveError", "parse_identifier", "matching_instances",
           "allowed_keys", "LEVELS", "LEVEL_KEY"]
