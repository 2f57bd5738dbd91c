"""The DIMSE SCP: Verification (C-ECHO), Storage (C-STORE) and Query (C-FIND) over DICOM TCP.

What it does, and where the standard says so:

* Association acceptance (PS3.8 7.1, 9.3.3): AE title from settings; any called AE title is
  accepted. With a non-empty ``dicom_allowed_aets`` an association from any other calling AE
  title is rejected with result *rejected-permanent*, source *service-user*, reason *calling AE
  title not recognised* (PS3.8 Table 9-21), before any DIMSE message can arrive.
* Presentation contexts (PS3.8 9.3.3.2, PS3.5 10): every storage SOP class pynetdicom knows
  (170) with every transfer syntax pydicom knows, compressed ones included. Within each proposed
  context the transfer syntax accepted is the first one the *sender* proposed that MedGate
  supports, so nobody has to transcode for us.
* C-STORE (PS3.4 Annex B, statuses B.2.3 and PS3.7 9.1.1.1.9 / Annex C): the data set is never
  decoded or re-encoded. The bytes received in the negotiated transfer syntax are prefixed with
  a preamble and File Meta Information (PS3.10 7.1) and handed to :mod:`app.dicom.store`, which
  validates, indexes and writes them. See :data:`C_STORE_STATUS` for the failure codes.
* C-FIND (PS3.4 Annex C, C.4.1): Study Root and Patient Root Find at PATIENT (Patient Root
  only), STUDY, SERIES and IMAGE level, answered by :mod:`app.dicom.query`, the same matching
  code QIDO-RS uses. Non-empty identifier elements are matching keys, empty ones return keys.

The module never writes to the store or the database itself; it must never change a received
data set.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from weakref import WeakKeyDictionary

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    _STORAGE_CLASSES,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import session_factory
from app.dicom import query, store

log = logging.getLogger("medgate.dicom.scp")

# PS3.7 D.3.3.2: an Implementation Class UID names this implementation; this one is a 2.25
# (UUID-derived, PS3.5 B.2) UID, fixed once for MedGate.
IMPLEMENTATION_CLASS_UID = "2.25.42456770610667420179963478452043247730"
IMPLEMENTATION_VERSION_NAME = "MEDGATE_0_1"

# Native (uncompressed) encodings first; the order only breaks ties the sender left open.
NATIVE_TRANSFER_SYNTAXES: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                       DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
STORAGE_TRANSFER_SYNTAXES: list[str] = NATIVE_TRANSFER_SYNTAXES + [
    str(ts) for ts in AllTransferSyntaxes if ts not in NATIVE_TRANSFER_SYNTAXES]
STORAGE_SOP_CLASSES: list[str] = sorted(set(_STORAGE_CLASSES.values()))
FIND_SOP_CLASSES: list[str] = [StudyRootQueryRetrieveInformationModelFind,
                               PatientRootQueryRetrieveInformationModelFind]

# Maximum length of the P-DATA-TF PDUs we receive (PS3.7 D.3.3.1). Bigger means fewer PDUs
# to handle per instance.
MAX_PDU_SIZE = 262_144
# How long stop() lets running associations finish before aborting them.
STOP_GRACE_SECONDS = 10.0

# StoreError.status -> C-STORE response status. PS3.4 B.2.3 defines A7xx (out of resources),
# A9xx (data set does not match SOP class) and Cxxx (cannot understand); PS3.7 Annex C adds
# the general failures 0x0110, 0x0111 and 0x0122, which C-STORE may also return
# (PS3.7 9.1.1.1.9). Warnings B000/B006/B007 are never sent: MedGate does not coerce or
# discard elements.
C_STORE_STATUS: dict[int, int] = {
    store.CANNOT_UNDERSTAND: 0xC000,                # not parseable, truncated, no meta
    store.DATASET_DOES_NOT_MATCH_SOP_CLASS: 0xA900,  # missing/invalid UIDs, series conflict
    store.SOP_CLASS_NOT_SUPPORTED: 0x0122,          # data set's SOP class is not storage
    store.DUPLICATE_SOP_INSTANCE: 0x0111,           # same SOP Instance UID, other content
    store.OUT_OF_RESOURCES: 0xA700,                 # disk full
    store.PROCESSING_FAILURE: 0x0110,               # database or file system failure
}
# C-FIND statuses, PS3.4 Table C.4-1.
FIND_IDENTIFIER_DOES_NOT_MATCH = 0xA900  # bad level, bad matching value
FIND_UNABLE_TO_PROCESS = 0xC000
FIND_PENDING = 0xFF00
FIND_PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
FIND_CANCELLED = 0xFE00

# C-FIND level -> query.py level. PATIENT is answered from STUDY matches, one per patient.
FIND_LEVELS = {"PATIENT": "STUDY", "STUDY": "STUDY", "SERIES": "SERIES", "IMAGE": "INSTANCE"}
PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                "PatientSex")
# Unique keys every response carries at and above its level (PS3.4 C.2.2.1, unique keys).
UNIQUE_KEYS = {"PATIENT": ["PatientID"], "STUDY": ["StudyInstanceUID"],
               "SERIES": ["StudyInstanceUID", "SeriesInstanceUID"],
               "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]}
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}


# ---------------------------------------------------------------- Part 10 file from a C-STORE

def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                  source_ae_title: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) for a received data set.

    Deterministic for a given instance and encoding, so a resend of identical bytes produces an
    identical file (and the store's duplicate rule sees it as identical)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = source_ae_title
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buf.getvalue()


def dataset_identity(data: memoryview | bytes, transfer_syntax_uid: str) -> tuple[str, str]:
    """(SOPClassUID, SOPInstanceUID) read from the head of an encoded data set.

    Only group 0008 up to (0008,0018) is parsed; a deflated body is inflated just far enough."""
    ts = UID(transfer_syntax_uid)
    for size in (65_536, None):
        head = bytes(data[:size] if size else data)
        if ts == DeflatedExplicitVRLittleEndian:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, 65_536 if size else 0)
        try:
            ds = read_dataset(DicomBytesIO(head), ts.is_implicit_VR, ts.is_little_endian,
                              stop_when=lambda tag, _vr, _len: tag > 0x00080018)
            return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - the 64 KiB head may end inside an element
            if size is None:
                raise
    raise AssertionError("unreachable")


def _status(code: int, comment: str = "") -> Dataset:
    rsp = Dataset()
    rsp.Status = code
    if comment:
        # (0000,0902) Error Comment is LO: at most 64 characters.
        rsp.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return rsp


# ---------------------------------------------------------------- C-FIND identifier handling

def _element_text(elem: DataElement) -> str:
    if elem.VR == "SQ" or elem.value is None:
        return ""
    if isinstance(elem.value, MultiValue | list):
        return "\\".join(str(v) for v in elem.value)
    if isinstance(elem.value, bytes):
        return elem.value.decode("ascii", "replace").strip(" \x00")
    return str(elem.value).strip()


def identifier_to_query(identifier: Dataset,
                        model: str) -> tuple[str, query.Query, list[str], list[str]]:
    """Turn a C-FIND identifier into (level, Query, return keys, unsupported keys).

    Raises query.QueryError when the level is missing or not valid for the model."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = set(FIND_LEVELS) - ({"PATIENT"} if model == StudyRootQueryRetrieveInformationModelFind
                                  else set())
    if level not in allowed:
        raise query.QueryError(f"QueryRetrieveLevel must be one of {', '.join(sorted(allowed))}")
    qlevel = FIND_LEVELS[level]
    supported = set(PATIENT_KEYS) if level == "PATIENT" else (
        set(query.LEVEL_KEYS[qlevel]) | {"ModalitiesInStudy"})
    filters: dict[str, str] = {}
    return_keys: list[str] = []
    unsupported: list[str] = []
    for elem in identifier:
        kw = elem.keyword
        if elem.tag.is_private or not kw or kw in _NOT_KEYS or elem.tag.group == 0x0000:
            continue
        return_keys.append(kw)
        value = _element_text(elem)
        if value in ("", "*"):
            continue
        if kw in supported:
            filters[kw] = value
        else:
            # PS3.4 C.2.2.1 (optional keys): one we cannot match on is ignored (universal
            # match) and the pending responses say so with 0xFF01 (PS3.4 Table C.4-1).
            unsupported.append(kw)
    return level, query.Query(qlevel, filters), return_keys, unsupported


def _set(ds: Dataset, kw: str, value: Any) -> None:
    vr = dictionary_VR(kw)
    if vr == "SQ":
        setattr(ds, kw, [])
    elif value is None or value == "":
        setattr(ds, kw, None)
    elif isinstance(value, list | tuple):
        setattr(ds, kw, [str(v) for v in value] if vr not in ("US", "UL", "SS", "SL") else value)
    else:
        setattr(ds, kw, value)


def match_to_identifier(match: dict[str, Any], level: str, return_keys: list[str],
                        ae_title: str) -> Dataset:
    """A pending response identifier: the requested return keys plus the unique keys."""
    ds = Dataset()
    keys = list(dict.fromkeys([*return_keys, *UNIQUE_KEYS[level]]))
    if any(isinstance(v, str) and not v.isascii() for v in match.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # PS3.5 6.1.2.3: UTF-8
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = ae_title
    for kw in keys:
        if kw not in ("QueryRetrieveLevel", "RetrieveAETitle"):
            _set(ds, kw, match.get(kw))
    return ds


def _patients(matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collapse STUDY matches into one PATIENT match per (PatientID, issuer)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for m in matches:
        key = (m.get("PatientID", ""), m.get("IssuerOfPatientID", ""))
        if key not in out:
            out[key] = {k: m.get(k) for k in PATIENT_KEYS} | {"NumberOfPatientRelatedStudies": 0}
        out[key]["NumberOfPatientRelatedStudies"] += 1
    return list(out.values())


# ---------------------------------------------------------------- the application entity

class DicomSCP:
    """One AE (settings.ae_title) with its handlers; :meth:`start` listens without blocking."""

    def __init__(self, settings: Settings,
                 sessions: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.sessions = sessions or session_factory(settings.db_url)
        self.ae = self._build_ae()
        self.server: ThreadedAssociationServer | None = None
        self._counts: WeakKeyDictionary[Association, Counter[str]] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = MAX_PDU_SIZE
        ae.add_supported_context(Verification, NATIVE_TRANSFER_SYNTAXES)
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, STORAGE_TRANSFER_SYNTAXES)
        for uid in FIND_SOP_CLASSES:
            ae.add_supported_context(uid, NATIVE_TRANSFER_SYNTAXES)
        # pynetdicom answers A-ASSOCIATE-RJ (1 rejected-permanent, 1 service-user,
        # 3 calling AE title not recognised) for any other calling AE title.
        ae.require_calling_aet = list(self.settings.dicom_allowed_aets)
        return ae

    @property
    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_CONN_OPEN, _no_delay), (evt.EVT_PDU_RECV, _quick_ack),
                (evt.EVT_REQUESTED, self.on_requested), (evt.EVT_ACCEPTED, self.on_accepted),
                (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_RELEASED, self.on_closed),
                (evt.EVT_ABORTED, self.on_closed), (evt.EVT_C_ECHO, self.on_c_echo),
                (evt.EVT_C_STORE, self.on_c_store), (evt.EVT_C_FIND, self.on_c_find)]

    def start(self) -> ThreadedAssociationServer:
        address = (self.settings.dicom_host, self.settings.dicom_port)
        try:
            self.server = self.ae.start_server(address, block=False,
                                               evt_handlers=self.handlers)
        except OSError as exc:
            raise RuntimeError(f"the DICOM SCP cannot listen on {address[0]}:{address[1]} "
                               f"(MEDGATE_DICOM_HOST/MEDGATE_DICOM_PORT): {exc}") from exc
        allow = ", ".join(self.settings.dicom_allowed_aets) or "any calling AE title"
        log.info("DICOM SCP %s listening on %s:%s (%d storage SOP classes, %d transfer "
                 "syntaxes; allowed: %s)", self.settings.ae_title, *self.server.server_address,
                 len(STORAGE_SOP_CLASSES), len(STORAGE_TRANSFER_SYNTAXES), allow)
        return self.server

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop listening, let running associations finish for ``grace`` s, then abort them."""
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            log.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        self.ae.shutdown()
        log.info("DICOM SCP %s stopped", self.settings.ae_title)

    # -- association events -------------------------------------------------------------

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        log.info("association requested by %s (%s:%s) calling %s", rq.calling_ae_title,
                 assoc.requestor.address, assoc.requestor.port, rq.called_ae_title)
        prefer_sender_transfer_syntax(assoc)

    def on_accepted(self, event: evt.Event) -> None:
        with self._lock:
            self._counts[event.assoc] = Counter()
        log.info("association accepted from %s (%d contexts)", event.assoc.requestor.ae_title,
                 len(event.assoc.accepted_contexts))

    def on_rejected(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title
        why = ("calling AE title not recognised"
               if self.ae.require_calling_aet and calling not in self.ae.require_calling_aet
               else "see pynetdicom log")
        log.warning("association from %s (%s) rejected: %s", calling,
                    event.assoc.requestor.address, why)

    def on_closed(self, event: evt.Event) -> None:
        counts = self._counts.get(event.assoc) or Counter()
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association from %s %s: %d stored, %d already stored, %d failed, %d queries",
                 event.assoc.requestor.ae_title, how, counts["stored"], counts["identical"],
                 counts["failed"], counts["find"])

    def _count(self, event: evt.Event, what: str) -> None:
        counts = self._counts.get(event.assoc)
        if counts is not None:
            counts[what] += 1

    # -- DIMSE services -----------------------------------------------------------------

    def on_c_echo(self, event: evt.Event) -> int:
        return 0x0000  # PS3.4 A.4: Verification success

    def on_c_store(self, event: evt.Event) -> Dataset | int:
        req = event.request
        sop_class = str(req.AffectedSOPClassUID)
        sop_inst = str(req.AffectedSOPInstanceUID)
        tsuid = str(event.context.transfer_syntax)
        calling = event.assoc.requestor.ae_title
        try:
            with req.DataSet.getbuffer() as data:
                failure = self._check_identity(data, tsuid, sop_class, sop_inst)
                if failure is not None:
                    self._count(event, "failed")
                    log.warning("C-STORE %s from %s refused (0x%04X): %s", sop_inst, calling,
                                failure.Status, failure.get("ErrorComment", ""))
                    return failure
                header = part10_header(sop_class, sop_inst, tsuid, self.settings.ae_title)
                tmp, sha, size = store.spool([header, data])
            stored = store.store_spooled(self.sessions, tmp, sha, size,
                                         source=f"dimse:{calling}")
        except store.StoreError as exc:
            self._count(event, "failed")
            code = C_STORE_STATUS.get(exc.status, 0x0110)
            log.warning("C-STORE %s from %s refused (0x%04X): %s", sop_inst, calling, code,
                        exc.reason)
            # The response names the instance already; keep the 64 characters for the why.
            comment = ("already stored with different content; first copy kept"
                       if code == 0x0111 else exc.reason.replace(f" {sop_inst}", ""))
            return _status(code, comment)
        except Exception as exc:  # noqa: BLE001 - answer the peer, keep the association
            self._count(event, "failed")
            log.exception("C-STORE %s from %s failed", sop_inst, calling)
            return _status(0x0110, f"processing failure: {type(exc).__name__}")
        self._count(event, "stored" if stored.created else "identical")
        log.debug("C-STORE %s from %s stored (%s)", sop_inst, calling,
                  "new" if stored.created else "identical copy already stored")
        return 0x0000

    @staticmethod
    def _check_identity(data: memoryview, tsuid: str, sop_class: str,
                        sop_inst: str) -> Dataset | None:
        """PS3.7 9.1.1.1: the data set's SOP Class/Instance UIDs are the request's affected
        ones. A data set without them, or with others, is refused with 0xA900."""
        try:
            ds_class, ds_inst = dataset_identity(data, tsuid)
        except Exception as exc:  # noqa: BLE001 - any parse failure: cannot understand
            return _status(0xC000, f"data set not readable: {exc}")
        if not ds_class or not ds_inst:
            missing = "SOPClassUID" if not ds_class else "SOPInstanceUID"
            return _status(0xA900, f"the data set has no {missing}")
        if ds_class != sop_class:
            return _status(0xA900, "SOPClassUID differs from Affected SOP Class UID")
        if ds_inst != sop_inst:
            return _status(0xA900, "SOPInstanceUID differs from Affected SOP Instance UID")
        return None

    def on_c_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        self._count(event, "find")
        model = str(event.request.AffectedSOPClassUID)
        try:
            level, q, return_keys, unsupported = identifier_to_query(event.identifier, model)
            with self.sessions() as session:
                matches = query.search(session, q)
        except query.QueryError as exc:
            log.info("C-FIND from %s refused: %s", event.assoc.requestor.ae_title, exc)
            yield _status(FIND_IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down
            log.exception("C-FIND from %s failed", event.assoc.requestor.ae_title)
            yield _status(FIND_UNABLE_TO_PROCESS, f"unable to process: {type(exc).__name__}"), None
            return
        if level == "PATIENT":
            matches = _patients(matches)
        pending = FIND_PENDING_OPTIONAL_KEYS_UNSUPPORTED if unsupported else FIND_PENDING
        for match in matches:
            if event.is_cancelled:
                yield FIND_CANCELLED, None
                return
            yield pending, match_to_identifier(match, level, return_keys, self.settings.ae_title)
        # pynetdicom sends the final 0x0000 Success response after the last pending one.


def _raw_socket(event: evt.Event) -> socket.socket | None:
    assoc_socket = getattr(event.assoc.dul, "socket", None)
    return getattr(assoc_socket, "socket", None)


def _no_delay(event: evt.Event) -> None:
    """Send our small responses at once (no Nagle delay on our side)."""
    sock = _raw_socket(event)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quick_ack(event: evt.Event) -> None:
    """Acknowledge received data at once (Linux TCP_QUICKACK, re-armed on every PDU).

    Senders that leave Nagle's algorithm on (dcmtk's storescu as packaged by Debian does) hold
    the last partial segment of each data set until the previous one is acknowledged; with a
    delayed ACK on our side that costs about 40 ms per instance."""
    sock = _raw_socket(event)
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def prefer_sender_transfer_syntax(assoc: Association) -> None:
    """Order our transfer syntaxes, per abstract syntax, as the requestor proposed them.

    pynetdicom accepts, for each proposed context, the first of *our* transfer syntaxes that
    the requestor also proposed. Reordering ours to follow the proposal (before negotiation,
    in EVT_REQUESTED) makes the sender's first supported choice win (PS3.8 9.3.2.2: the order
    of the proposed transfer syntaxes is the requestor's preference)."""
    proposed: dict[str, list[str]] = {}
    for cx in assoc.requestor.requested_contexts:
        names = proposed.setdefault(str(cx.abstract_syntax), [])
        names.extend(str(ts) for ts in cx.transfer_syntax if str(ts) not in names)
    contexts: list[PresentationContext] = []
    for cx in assoc.acceptor.supported_contexts:
        ours = [str(ts) for ts in cx.transfer_syntax]
        wanted = proposed.get(str(cx.abstract_syntax))
        if wanted:
            ordered = [ts for ts in wanted if ts in ours]
            ordered += [ts for ts in ours if ts not in ordered]
            new = build_context(cx.abstract_syntax, ordered)
            new.scu_role, new.scp_role = cx.scu_role, cx.scp_role
            contexts.append(new)
        else:
            contexts.append(cx)
    assoc.acceptor.supported_contexts = contexts


# ---------------------------------------------------------------- service entry points

def start_server(settings: Settings) -> tuple[DicomSCP, ThreadedAssociationServer]:
    scp = DicomSCP(settings)
    return scp, scp.start()


def start_scp(settings: Settings) -> Callable[[], None]:
    """Start the SCP beside the API (app.services.EXTRA_SERVICES); returns its stop callable.

    With ``MEDGATE_START_SCP=false`` nothing listens and the stop callable does nothing."""
    if not settings.start_scp:
        log.info("DICOM SCP not started (MEDGATE_START_SCP=false)")
        return lambda: None
    _quiet_pynetdicom()
    scp, _ = start_server(settings)
    return scp.stop


def serve_forever(settings: Settings) -> None:
    """Run the SCP in the foreground until KeyboardInterrupt (``medgate dicom-scp``)."""
    _quiet_pynetdicom()
    scp, _ = start_server(settings)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        scp.stop()


def _quiet_pynetdicom() -> None:
    """pynetdicom logs every DIMSE message at INFO; MedGate logs one line per association."""
    pnd = logging.getLogger("pynetdicom")
    if pnd.level == logging.NOTSET:
        pnd.setLevel(logging.WARNING)


__all__ = ["DicomSCP", "start_scp", "start_server", "serve_forever", "part10_header",
           "identifier_to_query", "match_to_identifier", "C_STORE_STATUS",
           "STORAGE_SOP_CLASSES", "STORAGE_TRANSFER_SYNTAXES"]
