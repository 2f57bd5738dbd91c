"""The durable instance store: validate, write, index. Both DIMSE C-STORE and STOW-RS end here.

Order of work for one instance (nothing half-done survives a failure):
1. the caller has written the received bytes to a temporary file under ``store/tmp``;
2. the header is parsed without pixel data and validated (Part 10, UIDs, storage SOP class,
   not truncated);
3. the temporary file is fsynced (before any database lock is taken);
4. Patient/Study/Series/Instance rows are flushed in one transaction (the unique SOPInstanceUID
   row is the lock against a concurrent writer of the same instance);
5. the file is renamed to ``store/<study>/<series>/<sop>.dcm`` and its folders fsynced;
6. the transaction commits; if it fails, the renamed file is removed.

``store_many`` does this for several files at once (one STOW-RS request): the files are fsynced
concurrently (:func:`fsync_soon`, a small pool of threads: the filesystem's journal then commits
them together), then one transaction and one fsync per folder for all of them, each file still
with its own outcome. STOW-RS starts each part's fsync as soon as the part is spooled, while the
next part is still arriving.

The bytes stored are the bytes received. The same SOPInstanceUID again with identical bytes is a
success that changes nothing. Only when the SHA-256 differs are the two data sets compared
(:func:`app.dicom.equivalence.same_data_set`: preamble, file meta, group lengths and trailing
padding ignored, values decoded, pixel data compared as bytes or as decoded pixels): the same
data set in another encoding (Explicit VR over C-STORE, Implicit VR over STOW-RS, another file
meta) is the same instance, a success that changes nothing, and the first copy is kept; a
different data set is refused with 0x0111 (Duplicate SOP Instance, a PS3.7 Annex C general
status) and the first copy is kept too. A new copy is compared with the stored one before the
transaction writes anything, so no database write lock is held while two files are decoded.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import socket
import tempfile
import threading
import zlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.sop_class import _STORAGE_CLASSES
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import MAX_INT, Instance, Patient, Series, Study
from app.dicom import equivalence, structure
from app.dicom.structure import PIXEL_TAGS, PixelElement
from app.faults import crash_point
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
# The first bytes of a spooled file are kept in memory: the header of almost every instance
# fits, so validation parses it without reading the file again.
HEAD_BYTES = 16 * 1024


# The source of MedGate's own results stored into a study (a DICOM SEG of a mask): their
# series are marked derived, are not analysis input and do not reopen the study.
DERIVED = "derived"


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
    created: bool  # False: the same instance (same bytes or same data set) was already stored


WRITER = f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


def tmp_dir() -> Path:
    d = get_settings().store_dir / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d


class Spooled(NamedTuple):
    """A received instance in its temporary file, with its first bytes and its fsync, if the
    receiver started one (:func:`fsync_soon`)."""

    tmp: Path
    sha256: str
    size: int
    head: bytes = b""
    fsync: Future | None = None


def spool_part(chunks: Iterable[bytes], limit: int | None = None) -> Spooled:
    """Write ``chunks`` to a temporary file in the store, hashing them on the way (one pass);
    keep the first HEAD_BYTES.

    Raises StoreError(0xA700) when the bytes exceed ``limit``; the partial file is removed."""
    # the writer's host and pid in the name: start-up clean-up removes only the files of
    # writers that are gone (app/dicom/reconcile.py)
    fd, name = tempfile.mkstemp(dir=tmp_dir(), prefix=f"in-{WRITER}-", suffix=".part")
    h = hashlib.sha256()
    size = 0
    head = b""
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise StoreError(OUT_OF_RESOURCES,
                                     f"instance exceeds the size limit of {limit} bytes")
                h.update(chunk)
                if len(head) < HEAD_BYTES:
                    head += chunk[:HEAD_BYTES - len(head)]
                fh.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Spooled(Path(name), h.hexdigest(), size, head)


def spool(chunks: Iterable[bytes], limit: int | None = None) -> tuple[Path, str, int]:
    """Write ``chunks`` to a temporary file in the store; return (path, sha256, size)."""
    tmp, sha256, size, _, _ = spool_part(chunks, limit)
    return tmp, sha256, size


# fsync releases the GIL and waits on the disk: several at once let the filesystem commit them
# in one journal transaction and keep the device's queue full.
_FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="medgate-fsync")


def fsync_soon(path: Path) -> Future:
    """Start fsyncing ``path`` in the background; the future raises the OSError, if any."""
    return _FSYNC_POOL.submit(_fsync_file, path)


def spool_file(fh: BinaryIO, limit: int | None = None) -> tuple[Path, str, int]:
    return spool(iter(lambda: fh.read(_CHUNK), b""), limit)


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    return str(value).strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    """An IS value for the index; one outside the IS range (PS3.5 6.2, also the database's) is
    invalid and indexed as absent, while the file keeps what was sent."""
    try:
        value = ds.get(keyword)
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is None or -MAX_INT - 1 <= number <= MAX_INT else None


def _check_inflated_size(fp: BinaryIO) -> bool:
    """For a deflated data set (PS3.5 A.5), inflate it in bounded steps and refuse it once it
    passes MEDGATE_MAX_INFLATED_BYTES: pydicom would inflate all of it into memory, on every
    read, so a few hundred KB could become gigabytes. True for a deflated data set (or one whose
    file meta could not be read here: pydicom's full read then reports it)."""
    limit = get_settings().max_inflated_bytes
    try:
        fp.seek(0)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return False
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while chunk := fp.read(_CHUNK):
            data = inflater.decompress(chunk, _CHUNK)
            while True:
                total += len(data)
                if total > limit:
                    raise StoreError(OUT_OF_RESOURCES,
                                     f"the deflated data set inflates to more than "
                                     f"{limit} bytes (MEDGATE_MAX_INFLATED_BYTES)")
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - a broken stream is for pydicom's read to report
        return True
    return True


class _HeadFirst:
    """A spooled file to read: offsets within ``head`` (its first bytes, kept when it was
    written) come from memory; the file is opened only for a read that goes past them."""

    def __init__(self, path: Path, head: bytes, size: int) -> None:
        self.path, self.head, self.size = path, head, size
        self.pos = 0
        self._fh: BinaryIO | None = None

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else self.pos + n
        if end <= len(self.head):
            out = self.head[self.pos:end]
        else:
            if self._fh is None:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            self._fh.seek(self.pos)
            out = self._fh.read(end - self.pos)
        self.pos += len(out)
        return out

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def __enter__(self) -> _HeadFirst:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(path: Path, head: bytes, size: int, deflated: bool) -> Dataset:
    """The data set up to its pixel data: from ``head`` when the header lies within it, else
    from the file. A deflated data set has no offsets to walk: it is parsed whole (inflated
    within MEDGATE_MAX_INFLATED_BYTES already), its bulk values left deferred."""
    if deflated:
        return pydicom.dcmread(path, defer_size=1024, force=False)
    if head:
        mem = io.BytesIO(head)
        if len(head) >= size:
            return pydicom.dcmread(mem, stop_before_pixels=True, force=False)
        try:
            ds = pydicom.dcmread(mem, stop_before_pixels=True, force=False)
            if mem.tell() < len(head):  # stopped at the pixel data, inside the head
                return ds
        except Exception:  # noqa: BLE001, S110 - cut off by the head: the file decides
            pass
    return pydicom.dcmread(path, stop_before_pixels=True, force=False)


def read_header(path: Path, head: bytes = b"") -> tuple[Dataset, PixelElement | None]:
    """Parse the header of a Part 10 file (no pixel data read into memory) and check it is
    whole; returns the data set and where its pixel data element is. ``head``: the file's
    first bytes, when the caller has them (the file is then read only past them).

    Only the elements before the pixel data are decoded (what validation and the index need);
    the structure walk checks every element, the pixel data and what follows included."""
    size = path.stat().st_size
    with _HeadFirst(path, head, size) as fp:
        deflated = _check_inflated_size(fp)
        try:
            ds = _parse(path, head, size, deflated)
        except (InvalidDicomError, EOFError, ValueError, OSError, TypeError, KeyError,
                NotImplementedError) as exc:
            raise StoreError(CANNOT_UNDERSTAND,
                             f"not a readable DICOM Part 10 file: {exc}") from exc
        if not ds.file_meta or "TransferSyntaxUID" not in ds.file_meta:
            raise StoreError(CANNOT_UNDERSTAND,
                             "the file meta information has no TransferSyntaxUID")
        return ds, _check_complete(fp, ds, size)


def _check_complete(fp: BinaryIO, ds: Dataset, size: int) -> PixelElement | None:
    """Refuse a file whose encoding is broken or cut off (:mod:`app.dicom.structure`), and
    return where its pixel data element is."""
    tsuid = ds.file_meta.TransferSyntaxUID
    if tsuid == DeflatedExplicitVRLittleEndian:
        # a deflated body has no element offsets in the file; pydicom inflated all of it
        # (within MEDGATE_MAX_INFLATED_BYTES) and failed on a broken stream
        for tag, keyword in PIXEL_TAGS.items():
            if tag in ds:
                value = ds[tag].value
                return PixelElement(keyword, len(value) if value is not None else 0, False)
        return None
    try:
        structure.file_meta_end(fp, size)
        return structure.walk(fp, size, tsuid.is_implicit_VR, tsuid.is_little_endian)
    except structure.Malformed as exc:
        raise StoreError(CANNOT_UNDERSTAND, f"malformed or truncated: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unusable
        raise StoreError(CANNOT_UNDERSTAND, f"truncated or malformed: {exc}") from exc


# Storage SOP classes whose IOD has the Image Pixel module as mandatory (their keywords say
# "ImageStorage": CT, MR, CR, DX, SC, US, XA, WSI, ...). Pixel Data missing from one of them
# is a file cut short, not an image without pixels.
IMAGE_STORAGE_CLASSES: frozenset[str] = frozenset(
    uid for name, uid in _STORAGE_CLASSES.items() if "ImageStorage" in name)


def _expected_length(ds: Dataset, keyword: str) -> int:
    """Bytes of native pixel data the Image Pixel module describes (PS3.5 8.1.1, PS3.3
    C.7.6.3); ValueError for a value that is not a positive whole number."""
    def number(kw: str, default: int | None = None) -> int:
        value = ds.get(kw, default)
        if value in (None, ""):
            if default is None:
                raise ValueError(f"{kw} is missing")
            value = default
        n = int(str(value).strip())
        if n <= 0:
            raise ValueError(f"{kw} is {n}")
        return n

    bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword) \
        or number("BitsAllocated")
    pixels = number("Rows") * number("Columns") * number("NumberOfFrames", 1)
    samples = number("SamplesPerPixel", 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    return (pixels * samples * bits + 7) // 8


def _check_pixel_data(ds: Dataset, pixels: PixelElement | None) -> None:
    """Pixel data that matches its transfer syntax (PS3.5 8.1.1 native, 8.2 / A.4
    encapsulated): a viewer, WADO-RS and the engines can then frame every stored image.

    A native value shorter than Rows x Columns x Samples x Frames x Bits Allocated is refused;
    a longer one is kept (pydicom and viewers read the frames and ignore the tail)."""
    sop_class = _uid(ds, "SOPClassUID")
    if pixels is None:
        if sop_class in IMAGE_STORAGE_CLASSES:
            raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                             "an image storage SOP class without Pixel Data (7FE0,0010): "
                             "the file ends before its pixels")
        return
    tsuid = ds.file_meta.TransferSyntaxUID
    encapsulated = pixels.length == 0xFFFFFFFF
    if tsuid.is_encapsulated:
        if pixels.keyword == "PixelData" and not (encapsulated and pixels.starts_with_item):
            raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                             f"the transfer syntax {tsuid} is compressed but the Pixel Data "
                             "is not encapsulated (PS3.5 A.4)")
        return
    if encapsulated:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"the Pixel Data is encapsulated but the transfer syntax {tsuid} is "
                         "native (PS3.5 A.4)")
    try:
        expected = _expected_length(ds, pixels.keyword)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"{pixels.keyword} without a usable Image Pixel module (Rows, Columns, "
                         f"Samples per Pixel, Bits Allocated, Number of Frames): {exc}") from exc
    if pixels.length < expected:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"{pixels.keyword} has {pixels.length} bytes; the Image Pixel module "
                         f"needs {expected} (PS3.5 8.1.1)")


def _uid(ds: Dataset, keyword: str) -> str:
    """A UID as sent: never cut, so one over 64 characters is refused, not shortened into
    another instance's UID."""
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip().rstrip("\0")


def validate(ds: Dataset, expected_study: str | None = None) -> tuple[str, str, str, str]:
    """Return (sop_class, sop_instance, study, series) or raise StoreError.

    The one validation every channel (C-STORE, STOW-RS, upload, store check) goes through. The
    UIDs come from the data set itself, never from the file meta: the index must describe what
    a reader of the data set sees (PS3.10 7.1: the meta only repeats them). A meta that
    disagrees is kept as received: de-identification tools often leave it behind."""
    sop_class = _uid(ds, "SOPClassUID")
    sop_inst = _uid(ds, "SOPInstanceUID")
    study = _uid(ds, "StudyInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
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
        # PS3.5 9.1: digits and dots, at most 64 characters. The names and lengths come first:
        # a DIMSE Error Comment (LO) keeps 64 characters.
        detail = "; ".join(f"{n} has {len(v)} characters" if len(v) > 64
                           else f"{n} {v[:64]!r} is not digits and dots" for n, v in (
                               ("SOPClassUID", sop_class), ("SOPInstanceUID", sop_inst),
                               ("StudyInstanceUID", study), ("SeriesInstanceUID", series))
                           if n in bad)
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"invalid UID: {detail} (PS3.5 9.1: at most 64, digits and dots)",
                         sop_class[:64], sop_inst[:64])
    if sop_class not in STORAGE_SOP_CLASSES:
        raise StoreError(SOP_CLASS_NOT_SUPPORTED,
                         f"SOP Class {sop_class} is not a storage SOP class MedGate accepts",
                         sop_class, sop_inst)
    if expected_study and study != expected_study:
        raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                         f"StudyInstanceUID {study} does not match the target study "
                         f"{expected_study}", sop_class, sop_inst)
    return sop_class, sop_inst, study, series


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _make_folders(folder: Path, store_dir: Path) -> set[Path]:
    """Make ``folder`` (and missing parents, within the store), each made one's name fsynced
    in its parent; returns the folders whose new entries the caller fsyncs: ``folder``."""
    changed = {folder}
    missing = []
    while not folder.is_dir() and folder != store_dir:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        _fsync_dir(made.parent)  # at once: a later failure cannot leave its name unsynced
    return changed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Valid:
    """A spooled instance that passed validation, waiting to be indexed."""

    tmp: Path
    sha256: str
    size: int
    ds: Dataset
    sop_class: str
    sop_inst: str
    study_uid: str
    series_uid: str
    tsuid: str


class _Rows:
    """Patient, study and series rows of one transaction, looked up once each."""

    def __init__(self, session: Session, derived: bool = False) -> None:
        self.session = session
        self.derived = derived
        self.patients: dict[tuple[str, str], Patient] = {}
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}
        self.new_studies: set[str] = set()

    def patient(self, ds: Dataset) -> Patient:
        key = (_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID"))
        patient = self.patients.get(key)
        if patient is None:
            patient = self.session.scalar(select(Patient).where(Patient.patient_id == key[0],
                                                                Patient.issuer == key[1]))
            if patient is None:
                patient = Patient(patient_id=key[0], issuer=key[1])
                self.session.add(patient)
            self.patients[key] = patient
        # Demographics follow the newest instance received; assigned only when they differ.
        for attr, kw, limit in (("patient_name", "PatientName", 324),
                                ("birth_date", "PatientBirthDate", 8),
                                ("sex", "PatientSex", 16)):
            value = _text(ds, kw, limit)
            if getattr(patient, attr) != value:
                setattr(patient, attr, value)
        if patient.id is None:
            self.session.flush()
        return patient

    def study(self, ds: Dataset, uid: str) -> Study:
        study = self.studies.get(uid)
        if study is None:
            study = self.session.scalar(select(Study).where(Study.study_uid == uid))
            if study is None:
                study = Study(study_uid=uid, patient_fk=self.patient(ds).id,
                              study_date=_text(ds, "StudyDate", 8),
                              study_time=_text(ds, "StudyTime", 16),
                              accession_number=_text(ds, "AccessionNumber"),
                              study_id=_text(ds, "StudyID", 16),
                              study_description=_text(ds, "StudyDescription"),
                              referring_physician=_text(ds, "ReferringPhysicianName", 324))
                self.session.add(study)
                self.session.flush()
                self.new_studies.add(uid)
            self.studies[uid] = study
        return study

    def series_of(self, v: _Valid) -> Series:
        series = self.series.get(v.series_uid)
        if series is None:
            series = self.session.scalar(select(Series).where(Series.series_uid == v.series_uid))
            if series is not None:
                # refuse before making a patient or study row the refused instance would leave
                owner = self.session.scalar(select(Study.study_uid)
                                            .where(Study.id == series.study_fk))
                if owner != v.study_uid:
                    raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                     f"series {v.series_uid} already belongs to another study",
                                     v.sop_class, v.sop_inst)
            study = self.study(v.ds, v.study_uid)
            if series is None:
                series = Series(series_uid=v.series_uid, study_fk=study.id,
                                modality=_text(v.ds, "Modality", 16),
                                series_number=_int(v.ds, "SeriesNumber"),
                                series_description=_text(v.ds, "SeriesDescription"),
                                body_part=_text(v.ds, "BodyPartExamined"),
                                derived=self.derived)
                self.session.add(series)
                self.session.flush()
            self.series[v.series_uid] = series
        if series.study_fk != self.study(v.ds, v.study_uid).id:
            raise StoreError(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                             f"series {v.series_uid} already belongs to another study",
                             v.sop_class, v.sop_inst)
        return series


def final_path(study: str, series: str, sop_inst: str) -> Path:
    return get_settings().store_dir / study / series / f"{sop_inst}.dcm"


def _validated(spooled: Spooled, expected_study: str | None) -> _Valid:
    tmp, sha256, size = spooled.tmp, spooled.sha256, spooled.size
    ds, pixels = read_header(tmp, spooled.head)
    sop_class, sop_inst, study_uid, series_uid = validate(ds, expected_study)
    try:
        _check_pixel_data(ds, pixels)
    except StoreError as exc:
        exc.sop_class_uid, exc.sop_instance_uid = sop_class, sop_inst
        raise
    return _Valid(tmp, sha256, size, ds, sop_class, sop_inst, study_uid, series_uid,
                  str(ds.file_meta.TransferSyntaxUID))


def _os_error(exc: OSError) -> StoreError:
    return StoreError(OUT_OF_RESOURCES if exc.errno == 28 else PROCESSING_FAILURE,
                      f"could not write the instance: {exc}")


def store_spooled(session_factory, tmp: Path, sha256: str, size: int,
                  expected_study: str | None = None, source: str = "") -> Stored:
    """Validate, index and move one spooled file into the store. Always consumes ``tmp``."""
    result = store_many(session_factory, [(tmp, sha256, size)], expected_study, source)[0]
    if isinstance(result, StoreError):
        raise result
    return result


class _SqliteWriter:
    """SQLite has one writer at a time, and a writer that finds the lock taken sleeps in steps
    of up to 100 ms before it tries again: the store's writers queue here instead, the threads
    of this process on a lock, the HTTP processes of one server (MEDGATE_HTTP_WORKERS) on an
    advisory lock of a file beside the database (flock(2); released by the kernel when a
    process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.thread = threading.Lock()
        self.fd: int | None = None

    def __enter__(self) -> None:
        self.thread.acquire()
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self.thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread.release()


_SQLITE_WRITERS: dict[str, _SqliteWriter] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


def _writer_lock(session_factory):  # noqa: ANN001, ANN202
    bind = getattr(session_factory, "kw", {}).get("bind")
    url = getattr(bind, "url", None)
    if getattr(getattr(bind, "dialect", None), "name", "") != "sqlite" or not url.database:
        return nullcontext()
    with _SQLITE_WRITERS_LOCK:
        lock = _SQLITE_WRITERS.get(url.database)
        if lock is None:
            lock = _SQLITE_WRITERS[url.database] = _SqliteWriter(
                Path(f"{url.database}.store-writer.lock"))
        return lock


def store_many(session_factory, spooled: list[Spooled] | list[tuple[Path, str, int]],
               expected_study: str | None = None, source: str = ""
               ) -> list[Stored | StoreError]:
    """Store several spooled files (one STOW-RS request, say) with one transaction, one fsync
    per file (all at once) and one per folder. Each item gets its own outcome; every tmp is
    consumed."""
    items = [s if isinstance(s, Spooled) else Spooled(*s) for s in spooled]
    outcomes: list[Stored | StoreError | None] = [None] * len(items)
    valid: list[tuple[int, _Valid]] = []
    try:
        for i, item in enumerate(items):
            try:
                valid.append((i, _validated(item, expected_study)))
            except StoreError as exc:
                outcomes[i] = exc
            except Exception as exc:  # noqa: BLE001 - a file no check foresaw: this part only
                outcomes[i] = StoreError(CANNOT_UNDERSTAND,
                                         f"not a usable DICOM file: {type(exc).__name__}")
        # Content is made durable before the transaction: the database's write lock is not
        # held across these fsyncs. They run together; each file's own fsync must succeed.
        synced = [(i, v, items[i].fsync or fsync_soon(v.tmp)) for i, v in valid]
        valid = []
        for i, v, done in synced:
            try:
                done.result()
            except OSError as exc:
                outcomes[i] = _os_error(exc)
            else:
                valid.append((i, v))
        same: dict[tuple[str, str], bool] = {}  # data set comparisons, kept across retries
        for attempt in range(3):
            try:
                with _writer_lock(session_factory):
                    for i, result in _index_and_move(session_factory, valid, source, same):
                        outcomes[i] = result
                break
            except IntegrityError as exc:
                # A concurrent writer created the same patient/study/series/instance first:
                # try again, now finding its rows (and the duplicate rules apply).
                if attempt == 2:
                    for i, _ in valid:
                        outcomes[i] = StoreError(PROCESSING_FAILURE,
                                                 f"the instance could not be indexed: {exc}")
            except OSError as exc:
                for i, _ in valid:
                    outcomes[i] = _os_error(exc)
                break
    finally:
        for item in items:
            item.tmp.unlink(missing_ok=True)
            if item.fsync is not None:
                item.fsync.cancel()  # a refused part's fsync need not run
    return [o if o is not None else StoreError(PROCESSING_FAILURE, "not stored")
            for o in outcomes]


@dataclass(frozen=True)
class _Prior:
    """The copy of a SOP Instance that is already stored (or earlier in the same request)."""

    sha256: str
    path: Path          # its file, to compare with (a spooled one for one earlier in the request)
    final: Path         # where it is (or will be) in the store
    tsuid: str


def _stored_priors(session: Session, sop_uids: list[str]) -> dict[str, _Prior]:
    if not sop_uids:
        return {}
    store_dir = get_settings().store_dir
    rows = session.execute(select(Instance.sop_instance_uid, Instance.sha256, Instance.path,
                                  Instance.transfer_syntax_uid)
                           .where(Instance.sop_instance_uid.in_(sop_uids))).all()
    return {uid: _Prior(sha, store_dir / path, store_dir / path, ts)
            for uid, sha, path, ts in rows}


def _same(prior: _Prior, v: _Valid, same: dict[tuple[str, str], bool]) -> bool:
    """Whether ``v`` is the instance ``prior`` already is: the same bytes, or (only when the
    SHA-256 differs) the same data set (:mod:`app.dicom.equivalence`). Memoised in ``same``."""
    if prior.sha256 == v.sha256:
        return True
    key = (prior.sha256, v.sha256)
    if key not in same:
        same[key] = equivalence.same_data_set(prior.path, v.tmp)
    return same[key]


def _index_and_move(session_factory, valid: list[tuple[int, _Valid]], source: str,
                    same: dict[tuple[str, str], bool] | None = None
                    ) -> list[tuple[int, Stored | StoreError]]:
    store_dir = get_settings().store_dir
    same = {} if same is None else same
    results: list[tuple[int, Stored | StoreError]] = []
    moved: list[Path] = []
    with session_factory() as session:
        existing = _stored_priors(session, [v.sop_inst for _, v in valid])
        # Copies of stored instances are compared before this transaction writes anything: no
        # write lock is held while two files are decoded (only two encodings of one instance
        # within one request are compared later, in the loop).
        for _, v in valid:
            if v.sop_inst in existing:
                _same(existing[v.sop_inst], v, same)
        rows = _Rows(session, derived=source == DERIVED)
        pending: list[tuple[int, _Valid, Path]] = []
        seen: dict[str, _Prior] = {}
        for i, v in valid:
            prior = existing.get(v.sop_inst, seen.get(v.sop_inst))
            if prior is not None:
                if _same(prior, v, same):
                    # the same instance: the first copy stays, and its path is the answer
                    results.append((i, Stored(v.sop_class, v.sop_inst, v.study_uid,
                                              v.series_uid, prior.tsuid, prior.final,
                                              created=False)))
                else:
                    results.append((i, StoreError(
                        DUPLICATE_SOP_INSTANCE, f"SOP Instance {v.sop_inst} is already stored "
                        "with different content; the first copy is kept", v.sop_class,
                        v.sop_inst)))
                continue
            stored = Stored(v.sop_class, v.sop_inst, v.study_uid, v.series_uid, v.tsuid,
                            final_path(v.study_uid, v.series_uid, v.sop_inst), created=False)
            try:
                series = rows.series_of(v)
            except StoreError as exc:
                results.append((i, exc))
                continue
            dest = stored.path
            session.add(Instance(sop_instance_uid=v.sop_inst, series_fk=series.id,
                                 sop_class_uid=v.sop_class,
                                 instance_number=_int(v.ds, "InstanceNumber"),
                                 transfer_syntax_uid=v.tsuid,
                                 path=str(dest.relative_to(store_dir)), size=v.size,
                                 sha256=v.sha256))
            seen[v.sop_inst] = _Prior(v.sha256, v.tmp, dest, v.tsuid)
            pending.append((i, v, dest))
        for uid, study in rows.studies.items():
            if any(v.study_uid == uid for _, v, _ in pending):
                grouping.instance_received(session, study, uid in rows.new_studies, source,
                                           derived=rows.derived)
        session.flush()  # the unique SOPInstanceUID rows now hold the lock
        try:
            folders: set[Path] = set()
            for _, v, dest in pending:
                if dest.parent not in folders:
                    folders |= _make_folders(dest.parent, store_dir)
                os.replace(v.tmp, dest)
                moved.append(dest)
                crash_point("store.renamed", len(moved))
            for folder in folders:  # the new names in them: files, and folders made here
                _fsync_dir(folder)
            crash_point("store.before_commit", len(moved))
            session.commit()
        except BaseException:
            session.rollback()
            for dest in moved:
                dest.unlink(missing_ok=True)
            raise
    for i, v, dest in pending:
        results.append((i, Stored(v.sop_class, v.sop_inst, v.study_uid, v.series_uid, v.tsuid,
                                  dest, created=True)))
    return results


def store_path(session_factory, path: Path, source: str = "") -> Stored:
    with open(path, "rb") as fh:
        tmp, sha, size = spool_file(fh)
    return store_spooled(session_factory, tmp, sha, size, source=source)


def store_dataset(session_factory, ds: Dataset, source: str = DERIVED) -> Stored:
    """Store an in-memory data set (MedGate's own SEG, SR, bulk annotations: by default as a
    derived series) through the same validation and path as every channel; the bytes are
    spooled straight into the store's temporary folder."""
    import io

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    tmp, sha256, size = spool([buf.getvalue()])
    return store_spooled(session_factory, tmp, sha256, size, source=source)
