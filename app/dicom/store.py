"""The durable instance store: validate, write, index. Both DIMSE C-STORE and STOW-RS end here.

Order of work for one instance (nothing half-done survives a failure):
1. the caller has written the received bytes to a temporary file under ``store/tmp``;
2. the header is parsed without pixel data and validated (Part 10, UIDs, storage SOP class,
   not truncated);
3. Patient/Study/Series/Instance rows are flushed in one transaction (the unique SOPInstanceUID
   row is the lock against a concurrent writer of the same instance);
4. the temporary file is fsynced and renamed to ``store/<study>/<series>/<sop>.dcm``;
5. the transaction commits; if it fails, the renamed file is removed.

The bytes stored are the bytes received. The same SOPInstanceUID again with identical bytes is a
success that changes nothing; with different bytes the first copy is kept and the sender gets
failure 0x0111 (Duplicate SOP Instance, PS3.7 C.4.2.1.4 general status).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.sop_class import _STORAGE_CLASSES
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Instance, Patient, Series, Study
from app.pipeline import grouping

# PS3.18 Table 10.5.3-3 / PS3.4 Annex B status codes, by name.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

STORAGE_SOP_CLASSES: frozenset[str] = frozenset(_STORAGE_CLASSES.values())
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CHUNK = 1 << 20


class StoreError(Exception):
    """An instance that was not stored; ``status`` is the DICOM failure code for the sender."""

    def __init__(self, status: int, reason: str, sop_class_uid: str = "",
                 sop_instance_uid: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class Stored:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    path: Path
    created: bool  # False: identical bytes were already stored


def tmp_dir() -> Path:
    d = get_settings().store_dir / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d


def spool(chunks: Iterable[bytes], limit: int | None = None) -> tuple[Path, str, int]:
    """Write ``chunks`` to a temporary file in the store; return (path, sha256, size).

    Raises StoreError(0xA700) when the bytes exceed ``limit``; the partial file is removed."""
    fd, name = tempfile.mkstemp(dir=tmp_dir(), prefix="in-", suffix=".part")
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise StoreError(OUT_OF_RESOURCES,
                                     f"instance exceeds the size limit of {limit} bytes")
                h.update(chunk)
                fh.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name), h.hexdigest(), size


def spool_file(fh: BinaryIO, limit: int | None = None) -> tuple[Path, str, int]:
    return spool(iter(lambda: fh.read(_CHUNK), b""), limit)


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    return str(value).strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def read_header(path: Path) -> Dataset:
    """Parse and validate the header of a Part 10 file (no pixel data read into memory)."""
    size = path.stat().st_size
    try:
        # defer_size keeps bulk values on disk while every element's offset and length is known.
        ds = pydicom.dcmread(path, defer_size=1024, force=False)
    except (InvalidDicomError, EOFError, ValueError, OSError, TypeError, KeyError,
            NotImplementedError) as exc:
        raise StoreError(CANNOT_UNDERSTAND, f"not a readable DICOM Part 10 file: {exc}") from exc
    if not ds.file_meta or "TransferSyntaxUID" not in ds.file_meta:
        raise StoreError(CANNOT_UNDERSTAND, "the file meta information has no TransferSyntaxUID")
    _check_complete(path, ds, size)
    return ds


def _check_complete(path: Path, ds: Dataset, size: int) -> None:
    """Refuse a file whose elements run past its end (a transfer cut off mid-value).

    pydicom reads a short final value without complaint, so walk the raw top-level elements:
    every defined length must fit in the file; undefined lengths are scanned to their
    delimiter, which fails on a cut-off file."""
    tsuid = ds.file_meta.TransferSyntaxUID
    if tsuid == DeflatedExplicitVRLittleEndian:
        return  # a deflated body has no element offsets to check against the file size
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            _read_file_meta_info(fp)
            for raw in data_element_generator(fp, tsuid.is_implicit_VR, tsuid.is_little_endian,
                                              defer_size=256):
                length = getattr(raw, "length", None)  # sequences come back parsed
                if length is not None and length != 0xFFFFFFFF \
                        and raw.value_tell + length > size:
                    raise StoreError(CANNOT_UNDERSTAND,
                                     f"truncated: element {raw.tag} needs "
                                     f"{raw.value_tell + length} bytes, the file has {size}")
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unusable
        raise StoreError(CANNOT_UNDERSTAND, f"truncated or malformed: {exc}") from exc


def validate(ds: Dataset, expected_study: str | None = None) -> tuple[str, str, str, str]:
    """Return (sop_class, sop_instance, study, series) or raise StoreError."""
    sop_class = _text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    sop_inst = _text(ds, "SOPInstanceUID") or str(
        ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    study = _text(ds, "StudyInstanceUID")
    series = _text(ds, "SeriesInstanceUID")
    missing = [n for n, v in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_inst),
                              ("StudyInstanceUID", study), ("SeriesInstanceUID", series)) if not v]
    if missing:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"missing required attribute(s): {', '.join(missing)}",
                         sop_class, sop_inst)
    bad = [n for n, v in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_inst),
                          ("StudyInstanceUID", study), ("SeriesInstanceUID", series))
           if not _UID.match(v) or len(v) > 64]
    if bad:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"invalid UID in {', '.join(bad)}",
                         sop_class, sop_inst)
    if sop_class not in STORAGE_SOP_CLASSES:
        raise StoreError(SOP_CLASS_NOT_SUPPORTED,
                         f"SOP Class {sop_class} is not a storage SOP class MedGate accepts",
                         sop_class, sop_inst)
    if expected_study and study != expected_study:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"StudyInstanceUID {study} does not match the target study "
                         f"{expected_study}", sop_class, sop_inst)
    return sop_class, sop_inst, study, series


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _get_or_create_patient(session: Session, ds: Dataset) -> Patient:
    pid, issuer = _text(ds, "PatientID"), _text(ds, "IssuerOfPatientID")
    patient = session.scalar(select(Patient).where(Patient.patient_id == pid,
                                                   Patient.issuer == issuer))
    if patient is None:
        patient = Patient(patient_id=pid, issuer=issuer)
        session.add(patient)
    # Demographics follow the newest instance received.
    patient.patient_name = _text(ds, "PatientName", 324)
    patient.birth_date = _text(ds, "PatientBirthDate", 8)
    patient.sex = _text(ds, "PatientSex", 16)
    session.flush()
    return patient


def _get_or_create_study(session: Session, ds: Dataset, study_uid: str,
                         patient: Patient) -> tuple[Study, bool]:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    created = study is None
    if study is None:
        study = Study(study_uid=study_uid, patient_fk=patient.id,
                      study_date=_text(ds, "StudyDate", 8), study_time=_text(ds, "StudyTime", 16),
                      accession_number=_text(ds, "AccessionNumber"),
                      study_id=_text(ds, "StudyID", 16),
                      study_description=_text(ds, "StudyDescription"),
                      referring_physician=_text(ds, "ReferringPhysicianName", 324))
        session.add(study)
        session.flush()
    return study, created


def _get_or_create_series(session: Session, ds: Dataset, series_uid: str, study: Study,
                          sop_class: str = "", sop_inst: str = "") -> Series:
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        series = Series(series_uid=series_uid, study_fk=study.id,
                        modality=_text(ds, "Modality", 16),
                        series_number=_int(ds, "SeriesNumber"),
                        series_description=_text(ds, "SeriesDescription"),
                        body_part=_text(ds, "BodyPartExamined"))
        session.add(series)
        session.flush()
    elif series.study_fk != study.id:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"series {series_uid} already belongs to another study",
                         sop_class, sop_inst)
    return series


def final_path(study: str, series: str, sop_inst: str) -> Path:
    return get_settings().store_dir / study / series / f"{sop_inst}.dcm"


def store_spooled(session_factory, tmp: Path, sha256: str, size: int,
                  expected_study: str | None = None, source: str = "") -> Stored:
    """Validate, index and move one spooled file into the store. Always consumes ``tmp``."""
    try:
        ds = read_header(tmp)
        sop_class, sop_inst, study_uid, series_uid = validate(ds, expected_study)
        tsuid = str(ds.file_meta.TransferSyntaxUID)
        for attempt in range(3):
            try:
                return _index_and_move(session_factory, ds, tmp, sha256, size, sop_class,
                                       sop_inst, study_uid, series_uid, tsuid, source)
            except IntegrityError:
                # A concurrent writer created the same patient/study/series/instance first:
                # try again, now finding its rows (and the duplicate rules apply).
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(OUT_OF_RESOURCES if exc.errno == 28 else PROCESSING_FAILURE,
                         f"could not write the instance: {exc}") from exc
    except IntegrityError as exc:
        raise StoreError(PROCESSING_FAILURE, "the instance could not be indexed") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _index_and_move(session_factory, ds: Dataset, tmp: Path, sha256: str, size: int,
                    sop_class: str, sop_inst: str, study_uid: str, series_uid: str,
                    tsuid: str, source: str) -> Stored:
    dest = final_path(study_uid, series_uid, sop_inst)
    with session_factory() as session:
        existing = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_inst))
        if existing is not None:
            if existing.sha256 == sha256:
                return Stored(sop_class, sop_inst, study_uid, series_uid, tsuid,
                              get_settings().store_dir / existing.path, created=False)
            raise StoreError(DUPLICATE_SOP_INSTANCE,
                             f"SOP Instance {sop_inst} is already stored with different content;"
                             " the first copy is kept", sop_class, sop_inst)
        patient = _get_or_create_patient(session, ds)
        study, _ = _get_or_create_study(session, ds, study_uid, patient)
        series = _get_or_create_series(session, ds, series_uid, study, sop_class, sop_inst)
        session.add(Instance(sop_instance_uid=sop_inst, series_fk=series.id,
                             sop_class_uid=sop_class,
                             instance_number=_int(ds, "InstanceNumber"),
                             transfer_syntax_uid=tsuid,
                             path=str(dest.relative_to(get_settings().store_dir)),
                             size=size, sha256=sha256))
        grouping.instance_received(session, study, source=source)
        session.flush()  # the unique SOPInstanceUID row now holds the lock
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        try:
            session.commit()
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    return Stored(sop_class, sop_inst, study_uid, series_uid, tsuid, dest, created=True)


def store_bytes(session_factory, data: bytes, expected_study: str | None = None,
                source: str = "") -> Stored:
    tmp, sha, size = spool([data])
    return store_spooled(session_factory, tmp, sha, size, expected_study, source)


def store_path(session_factory, path: Path, source: str = "") -> Stored:
    with open(path, "rb") as fh:
        tmp, sha, size = spool_file(fh)
    return store_spooled(session_factory, tmp, sha, size, source=source)
