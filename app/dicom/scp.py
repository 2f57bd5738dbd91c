"""The DIMSE SCP: Verification (C-ECHO), Storage (C-STORE), Query (C-FIND) and Retrieve
(C-MOVE, C-GET) over DICOM TCP.

What it does, and where the standard says so:

* Association acceptance (PS3.8 7.1, 9.3.3): the called AE title must be ours, else
  A-ASSOCIATE-RJ rejected-permanent, service-user, reason 7 *called AE title not recognised*
  (PS3.8 Table 9-21). The calling AE title must be a known peer (:mod:`app.dicom.peers`, read
  from the database once per association) connecting from its registered host, else reason 3
  *calling AE title not recognised*, before any DIMSE message can arrive. With
  ``dicom_accept_any_peer`` unknown peers are accepted with store and query rights.
* Transport: plain TCP on ``dicom_port``; with ``dicom_tls_port`` also TLS 1.2 or later
  (PS3.15 Annex B secure transport connection profiles) with the same AE, handlers and
  peer checks; with ``dicom_tls_ca`` a client certificate signed by that CA is required.
* Presentation contexts (PS3.8 9.3.3.2, PS3.5 10): every storage SOP class pynetdicom knows
  (170) with every transfer syntax pydicom knows, compressed ones included. Within each proposed
  context the transfer syntax accepted is the first one the *sender* proposed that MedGate
  supports, so nobody has to transcode for us.
* A request must fit the presentation context it arrives on (PS3.7 9.1, PS3.8 9.3.2.2: the
  context's abstract syntax is the SOP class of the messages sent on it). A C-STORE on the
  Verification or a Find context, or one whose Affected SOP Class UID is not the context's, is
  answered at once with 0x0122 *SOP Class Not Supported* (PS3.7 Annex C) instead of
  pynetdicom's dispatch by the message's UID (which answered with a C-ECHO-RSP, stored on the
  wrong context or aborted). See :class:`_Association`.
* C-STORE (PS3.4 Annex B, statuses B.2.3 and PS3.7 9.1.1.1.9 / Annex C): the data set is never
  decoded or re-encoded. The bytes received in the negotiated transfer syntax are prefixed with
  a preamble and File Meta Information (PS3.10 7.1) and handed to :mod:`app.dicom.store`, which
  validates, indexes and writes them. See :data:`C_STORE_STATUS` for the failure codes. A peer
  without the store right gets 0x0124 *Refused: Not Authorized* (PS3.7 Annex C); an empty data
  set 0xA900. A request whose Command Data Set Type announces a data set that never comes (a
  sender fault; the SCP cannot know it will not come) is completed as empty after
  :data:`ANNOUNCED_DATA_SET_WAIT_SECONDS` of silence from the peer, and answered 0xA900.
* C-FIND (PS3.4 Annex C, C.4.1): Study Root and Patient Root Find at PATIENT (Patient Root
  only), STUDY, SERIES and IMAGE level, answered by :mod:`app.dicom.query`, the same matching
  code QIDO-RS uses. Non-empty identifier elements are matching keys, empty ones return keys.
  A peer without the query right gets a single final 0x0124 *Refused: Not Authorized* response
  and no matches: a status the standard defines for every DIMSE service (PS3.7 Annex C), where
  an A-ABORT would tell the peer nothing and cost it the association.
* C-MOVE and C-GET (PS3.4 C.4.2, C.4.3): Study Root and Patient Root at PATIENT (Patient Root
  only), STUDY, SERIES and IMAGE level; the identifier's unique keys are matched by
  :mod:`app.dicom.retrieve` (with :mod:`app.dicom.query`) against everything stored, MedGate's
  derived series included. Everything that can refuse a request is decided before the first
  sub-operation (:meth:`DicomSCP.begin_retrieve`): no retrieve right 0x0124, a bad identifier
  0xA900 (0xC000 when it does not decode), a move destination that is not a known peer with a
  host and port 0xA801 (PS3.4 Table C.4-2), more than 65535 instances 0xA702. The C-STORE
  sub-operations are pynetdicom's: C-MOVE on a new association to the destination as our AE
  title, C-GET on the requestor's storage contexts where it took the SCP role (SCP/SCU role
  selection); C-CANCEL stops them (0xFE00).
* Audit (:mod:`app.security.audit`, each in a session of its own; a failed write is logged and
  never changes a DIMSE answer): every association attempt (``dicom.associate``), its store
  summary when it ends (``dicom.release``), every C-FIND (``dicom.find``: level, the names of
  the matching keys, never their values, the number of matches), every C-MOVE and C-GET
  (``dicom.move``, ``dicom.get``: level, key names, destination AE title, the sub-operation
  counts of the final response) and failed TLS handshakes.

The module never writes to the store or the database itself; it must never change a received
data set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import pydicom
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
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    _STORAGE_CLASSES,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import session_factory
from app.dicom import peers, query, retrieve, store
from app.security import audit

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
MOVE_SOP_CLASSES: list[str] = [StudyRootQueryRetrieveInformationModelMove,
                               PatientRootQueryRetrieveInformationModelMove]
GET_SOP_CLASSES: list[str] = [StudyRootQueryRetrieveInformationModelGet,
                              PatientRootQueryRetrieveInformationModelGet]
PATIENT_ROOT_MODELS = frozenset({PatientRootQueryRetrieveInformationModelFind,
                                 PatientRootQueryRetrieveInformationModelMove,
                                 PatientRootQueryRetrieveInformationModelGet})

# Maximum length of the P-DATA-TF PDUs we receive (PS3.7 D.3.3.1). Bigger means fewer PDUs
# to handle per instance.
MAX_PDU_SIZE = 262_144
# How long stop() lets running associations finish before aborting them.
STOP_GRACE_SECONDS = 10.0
# A request whose command announced a data set (Command Data Set Type != 0x0101, PS3.7 E.1)
# and whose peer then sent nothing for this long is completed as an empty data set and
# answered, rather than left waiting for the network timeout. Silence is measured on the
# socket (Linux TCP_INFO), so a slow link that is still delivering is never cut short.
ANNOUNCED_DATA_SET_WAIT_SECONDS = 5.0
# A TLS handshake must finish within this long; it runs in the connection's own thread.
TLS_HANDSHAKE_SECONDS = 10.0
# At most this many Study Instance UIDs are kept in one association's audit summary.
AUDIT_MAX_STUDIES = 500
# A C-MOVE's association to its destination must be up within this long (TCP connect).
MOVE_CONNECT_SECONDS = 10.0
# PS3.8 9.3.2.2: at most 128 presentation contexts in one A-ASSOCIATE-RQ (odd IDs 1-255).
MAX_REQUESTED_CONTEXTS = 128

# General statuses any DIMSE service may return (PS3.7 Annex C).
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class Not Supported
NOT_AUTHORISED = 0x0124           # Refused: Not Authorized
# PS3.8 Table 9-21 (A-ASSOCIATE-RJ): (result, source, reason).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE
REJECT_TRANSIENT = (0x02, 0x01, 0x01)   # rejected-transient, service-user, no reason given

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
# C-MOVE and C-GET statuses, PS3.4 C.4.2.1.5 (Table C.4-2) and C.4.3.1.4 (Table C.4-3). The
# sub-operation outcomes (0x0000, 0xB000, 0xA702 when all failed, 0xFE00) are pynetdicom's,
# from the C-STORE responses; MedGate sends the refusals itself (see begin_retrieve).
RETRIEVE_TOO_MANY = 0xA702               # Refused: Out of resources - cannot perform sub-ops
MOVE_DESTINATION_UNKNOWN = 0xA801        # Refused: Move Destination unknown
RETRIEVE_IDENTIFIER_DOES_NOT_MATCH = 0xA900
RETRIEVE_UNABLE_TO_PROCESS = 0xC000
RETRIEVE_PENDING = 0xFF00
RETRIEVE_CANCELLED = 0xFE00
# Number of Remaining/Completed/... Sub-operations are US (PS3.7 Table 9.3-10, 9.3-12).
MAX_SUB_OPERATIONS = 65535

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


# ---------------------------------------------------------------- transport: servers and TLS

def tls_context(settings: Settings) -> ssl.SSLContext:
    """The server side of a secure transport connection (PS3.15 Annex B): TLS 1.2 or later,
    our certificate and key; with ``dicom_tls_ca`` a client certificate signed by that CA is
    required and verified (mutual authentication)."""
    if not settings.dicom_tls_cert or not settings.dicom_tls_key:
        raise RuntimeError("MEDGATE_DICOM_TLS_PORT is set, so MEDGATE_DICOM_TLS_CERT and "
                           "MEDGATE_DICOM_TLS_KEY (PEM files) are needed too")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
        if settings.dicom_tls_ca:
            ctx.load_verify_locations(cafile=settings.dicom_tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise RuntimeError(f"DICOM TLS: cannot load MEDGATE_DICOM_TLS_CERT/_KEY/_CA: {exc}"
                           ) from exc
    return ctx


# Which requests must arrive on which presentation contexts (PS3.8 9.3.2.2: a context's
# abstract syntax is the SOP class its messages use).
_CONTEXTS_OF: dict[type, frozenset[str]] = {C_STORE: frozenset(STORAGE_SOP_CLASSES),
                                              C_FIND: frozenset(FIND_SOP_CLASSES),
                                              C_MOVE: frozenset(MOVE_SOP_CLASSES),
                                              C_GET: frozenset(GET_SOP_CLASSES)}


def off_context_response(msg: Any, context: PresentationContext) -> Any:
    """The 0x0122 response to a C-STORE, C-FIND, C-MOVE or C-GET that does not belong on
    ``context``, or None when it does (or is another kind of request, left to pynetdicom)."""
    allowed = _CONTEXTS_OF.get(type(msg))
    abstract = str(context.abstract_syntax)
    if allowed is None or (abstract in allowed and str(msg.AffectedSOPClassUID) == abstract):
        return None
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
    if isinstance(msg, C_STORE):
        rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
    rsp.Status = SOP_CLASS_NOT_SUPPORTED
    name = UID(abstract).name if UID(abstract).is_valid else abstract
    rsp.ErrorComment = f"not a request for the {name} context"[:64]
    return rsp


def retrieve_response(msg: C_MOVE | C_GET, code: int, comment: str) -> C_MOVE | C_GET:
    """A final C-MOVE-RSP/C-GET-RSP with ``code`` and an Error Comment (LO, 64 characters)."""
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
    rsp.Status = code
    rsp.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return rsp


class _Association(Association):
    """pynetdicom's acceptor, except that a request must fit its presentation context, and a
    C-MOVE or C-GET is checked before pynetdicom starts its sub-operations.

    pynetdicom picks the service class from the request's Affected SOP Class UID and ignores
    the context it came on: a C-STORE naming Verification on the Verification context got a
    C-ECHO-RSP, one naming a Find model made the Query/Retrieve class raise (an A-ABORT), and
    one naming CT Image Storage on the Verification or a Find context was stored. Such a
    request is answered here, at once, with 0x0122 (see :func:`off_context_response`).

    pynetdicom's C-MOVE handler protocol cannot refuse a request before it has associated with
    the move destination (the destination comes first, then the number of sub-operations, and
    only then a status). MedGate decides rights, identifier, destination and matches first
    (:meth:`DicomSCP.begin_retrieve`) and answers a refusal itself; what it accepts goes on to
    pynetdicom's Query/Retrieve service class and the EVT_C_MOVE/EVT_C_GET handlers."""

    def _serve_request(self, msg: Any, context_id: int) -> None:
        context = self._accepted_cx.get(context_id)
        scp = getattr(self._server, "scp", None)
        if context is not None and not self._sent_release and msg.is_valid_request:
            rsp = off_context_response(msg, context)
            if rsp is not None:
                if scp is not None:
                    scp.refused_off_context(self, msg, context)
                self.dimse.send_msg(rsp, context_id)
                return
            if isinstance(msg, C_MOVE | C_GET) and scp is not None:
                try:
                    rsp = scp.begin_retrieve(self, msg, context)
                except Exception as exc:  # noqa: BLE001 - answer, keep the association
                    log.exception("C-MOVE/C-GET could not be checked")
                    rsp = retrieve_response(msg, RETRIEVE_UNABLE_TO_PROCESS,
                                            f"unable to process: {type(exc).__name__}")
                if rsp is not None:
                    self.dimse.send_msg(rsp, context_id)
                    return
                try:
                    super()._serve_request(msg, context_id)
                finally:
                    scp.end_retrieve(self)
                return
        super()._serve_request(msg, context_id)


class _Handler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # The same object with one method overridden: pynetdicom builds the acceptor itself
        # and has no hook to build a subclass.
        assoc.__class__ = _Association
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`_Association`; on the TLS listener the
    handshake runs in the connection's own thread, with a deadline.

    (pynetdicom wraps the socket in its accept loop, so one client that connected and sent
    nothing would hold up every other TLS connection.)"""

    def __init__(self, *args: Any, tls: ssl.SSLContext | None = None,
                 scp: DicomSCP | None = None, **kwargs: Any) -> None:
        self.tls = tls
        self.scp = scp
        super().__init__(*args, request_handler=_Handler, **kwargs)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            raw = request
            try:
                raw.settimeout(TLS_HANDSHAKE_SECONDS)
                request = self.tls.wrap_socket(raw, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                if self.scp is not None:
                    self.scp.on_tls_failure(client_address, exc)
                self.shutdown_request(raw)
                return
        super().finish_request(request, client_address)


# ---------------------------------------------------------------- the application entity

@dataclass
class _AssocState:
    """What MedGate knows about one association, from A-ASSOCIATE-RQ to its end."""

    id: str
    calling: str
    called: str
    address: str
    port: int
    tls: bool
    decision: peers.Decision | None = None  # set when accepted
    reason: str = ""                        # why it was rejected
    counts: Counter[str] = field(default_factory=Counter)
    studies: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    studies_truncated: bool = False
    started: float = field(default_factory=time.monotonic)
    closed: bool = False
    waiting: tuple[Any, float, bool] | None = None  # (message, since, completed)
    retrieval: _Retrieval | None = None  # the C-MOVE or C-GET being served

    @property
    def actor(self) -> str:
        return f"dicom:{self.calling}"

    def may(self, action: str) -> bool:
        return self.decision is not None and self.decision.may(action)


@dataclass
class _Retrieval:
    """One accepted C-MOVE or C-GET: what to send, where, and what the peer was last told."""

    service: str                          # "move" or "get"
    record: dict[str, Any]                # the audit detail, counts added at the end
    items: list[retrieve.Item]
    destination: tuple[str, int] | None = None   # C-MOVE: (host, port) of the move destination
    contexts: list[PresentationContext] = field(default_factory=list)  # C-MOVE: proposed
    last: dict[str, int] = field(default_factory=dict)  # status and counts of the last response


def move_contexts(items: list[retrieve.Item]) -> list[PresentationContext]:
    """The presentation contexts to propose to a move destination: one per (SOP class, stored
    transfer syntax), the stored syntax first; a native one also offers Explicit and Implicit VR
    Little Endian (pynetdicom converts between native encodings, never to or from a compressed
    one). At most 128 (PS3.8 9.3.2.2); instances left without a context fail."""
    contexts: list[PresentationContext] = []
    for sop_class, tsuid in dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid)
                                          for i in items):
        if len(contexts) == MAX_REQUESTED_CONTEXTS:
            log.warning("C-MOVE: more than %d SOP class/transfer syntax pairs; the instances "
                        "of the others will fail", MAX_REQUESTED_CONTEXTS)
            break
        syntaxes = [tsuid] if tsuid else []  # an old row may lack it: native, then
        if not tsuid or tsuid in NATIVE_TRANSFER_SYNTAXES:
            syntaxes += [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                         if ts != tsuid]
        contexts.append(build_context(sop_class, syntaxes))
    return contexts


class DicomSCP:
    """One AE (settings.ae_title) with its handlers; :meth:`start` listens without blocking."""

    def __init__(self, settings: Settings,
                 sessions: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.sessions = sessions or session_factory(settings.db_url)
        self.ae = self._build_ae()
        self.server: ThreadedAssociationServer | None = None
        self.tls_server: ThreadedAssociationServer | None = None
        self.announced_data_set_wait = ANNOUNCED_DATA_SET_WAIT_SECONDS
        self._assocs: WeakKeyDictionary[Association, _AssocState] = WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = MAX_PDU_SIZE
        ae.connection_timeout = MOVE_CONNECT_SECONDS  # only our own (C-MOVE) associations
        ae.add_supported_context(Verification, NATIVE_TRANSFER_SYNTAXES)
        for uid in STORAGE_SOP_CLASSES:
            # SCP/SCU Role Selection (PS3.7 D.3.3.4): a requestor may also take the storage
            # SCP role, so that MedGate sends it the instances of a C-GET on that context. A
            # requestor that proposes no role selection gets the default roles (it stores to us).
            ae.add_supported_context(uid, STORAGE_TRANSFER_SYNTAXES, scu_role=True,
                                     scp_role=True)
        for uid in FIND_SOP_CLASSES + MOVE_SOP_CLASSES + GET_SOP_CLASSES:
            ae.add_supported_context(uid, NATIVE_TRANSFER_SYNTAXES)
        # pynetdicom answers A-ASSOCIATE-RJ (1 rejected-permanent, 1 service-user, 7 called AE
        # title not recognised) to a request for any other AE. Calling AE titles are checked
        # against the peers table in on_requested.
        ae.require_called_aet = True
        return ae

    @property
    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_CONN_OPEN, _no_delay), (evt.EVT_PDU_RECV, _quick_ack),
                (evt.EVT_REQUESTED, self.on_requested), (evt.EVT_ACCEPTED, self.on_accepted),
                (evt.EVT_REJECTED, self.on_rejected), (evt.EVT_RELEASED, self.on_closed),
                (evt.EVT_ABORTED, self.on_closed), (evt.EVT_C_ECHO, self.on_c_echo),
                (evt.EVT_C_STORE, self.on_c_store), (evt.EVT_C_FIND, self.on_c_find),
                (evt.EVT_C_MOVE, self.on_c_move), (evt.EVT_C_GET, self.on_c_get)]

    def _listen(self, port: int, tls: ssl.SSLContext | None) -> ThreadedAssociationServer:
        address = (str(self.settings.dicom_host), port)
        try:
            server = self.ae.make_server(address, evt_handlers=self.handlers,
                                         server_class=_Server, tls=tls, scp=self)
        except OSError as exc:
            what = "MEDGATE_DICOM_TLS_PORT" if tls else "MEDGATE_DICOM_PORT"
            raise RuntimeError(f"the DICOM SCP cannot listen on {address[0]}:{port} "
                               f"(MEDGATE_DICOM_HOST/{what}): {exc}") from exc
        thread = threading.Thread(target=server.serve_forever, daemon=True,
                                  name=f"DicomSCP{'-TLS' if tls else ''}@{port}")
        thread.start()
        # As AE.start_server does: the AE's shutdown() and the server's own shutdown() use it.
        self.ae._servers.append(server)
        return server

    def start(self) -> ThreadedAssociationServer:
        tls = tls_context(self.settings) if self.settings.dicom_tls_port else None
        self._stopping.clear()
        self.server = self._listen(self.settings.dicom_port, None)
        if tls is not None:
            try:
                self.tls_server = self._listen(int(self.settings.dicom_tls_port or 0), tls)
            except RuntimeError:
                self.stop(grace=0)
                raise
        self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                          name="DicomSCP-watchdog")
        self._watchdog.start()
        tls_note = (f", TLS on port {self.tls_server.server_address[1]}"
                    f"{' with client certificates' if self.settings.dicom_tls_ca else ''}"
                    if self.tls_server else "")
        log.info("DICOM SCP %s listening on %s:%s%s (%d storage SOP classes, %d transfer "
                 "syntaxes)", self.settings.ae_title, *self.server.server_address[:2],
                 tls_note, len(STORAGE_SOP_CLASSES), len(STORAGE_TRANSFER_SYNTAXES))
        if os.environ.get("MEDGATE_DICOM_ALLOWED_AETS"):
            log.warning("MEDGATE_DICOM_ALLOWED_AETS is no longer read: only known peers may "
                        "associate (`medgate peers add AE --host H --store`)")
        if self.settings.dicom_accept_any_peer:
            log.warning("MEDGATE_DICOM_ACCEPT_ANY_PEER is on: any calling AE title may store "
                        "and query; register peers (`medgate peers add`) and turn it off "
                        "outside demos")
        return self.server

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop listening, let running associations finish for ``grace`` s, then abort them."""
        servers = [s for s in (self.server, self.tls_server) if s is not None]
        self.server = self.tls_server = None
        self._stopping.set()
        if not servers:
            return
        for server in servers:
            server.shutdown()
        deadline = time.monotonic() + grace
        while any(s.active_associations for s in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for server in servers:
            for assoc in server.active_associations:
                log.warning("aborting association from %s at shutdown",
                            assoc.requestor.ae_title)
                assoc.abort()
        self.ae.shutdown()
        log.info("DICOM SCP %s stopped", self.settings.ae_title)

    # -- audit ---------------------------------------------------------------------------

    def _audit(self, actor: str, action: str, resource_type: str, resource_id: str,
               outcome: str, detail: dict[str, Any]) -> None:
        audit.record_alone(self.sessions, actor, action, resource_type, resource_id, outcome,
                           detail)

    def _audit_association(self, st: _AssocState, outcome: str, reason: str = "",
                           codes: tuple[int, ...] | None = None) -> None:
        detail: dict[str, Any] = {
            "association": st.id, "calling_ae": st.calling, "called_ae": st.called,
            "address": st.address, "port": st.port, "tls": st.tls,
            "outcome": "accepted" if outcome == "success" else "rejected"}
        if reason:
            detail["reason"] = reason
        if codes:
            detail["result"], detail["source"], detail["diagnostic"] = codes
        if st.decision is not None and st.decision.peer is not None:
            detail["rights"] = {a: st.decision.may(a) for a in ("store", "query", "retrieve")}
            detail["known_peer"] = st.decision.known
        self._audit(st.actor, "dicom.associate", "dicom_association", st.id, outcome, detail)

    # -- association events -------------------------------------------------------------

    def _state(self, assoc: Association) -> _AssocState:
        with self._lock:
            st = self._assocs.get(assoc)
            if st is None:
                rq = assoc.requestor.primitive
                st = _AssocState(
                    id=uuid.uuid4().hex[:16],
                    calling=str(getattr(rq, "calling_ae_title", "") or "").strip(),
                    called=str(getattr(rq, "called_ae_title", "") or "").strip(),
                    address=str(assoc.requestor.address), port=int(assoc.requestor.port or 0),
                    tls=self.tls_server is not None and assoc._server is self.tls_server)
                self._assocs[assoc] = st
            return st

    def on_requested(self, event: evt.Event) -> None:
        """Decide on the calling AE title before pynetdicom negotiates (PS3.8 9.3.3.3).

        Fails closed: any error here rejects the association."""
        assoc = event.assoc
        try:
            st = self._state(assoc)
            log.info("association requested by %s (%s:%s%s) calling %s", st.calling,
                     st.address, st.port, ", TLS" if st.tls else "", st.called)
            if st.called != self.settings.ae_title.strip():
                st.reason = (f"called AE title {st.called!r} is not "
                             f"{self.settings.ae_title!r}")
                return  # pynetdicom rejects it (require_called_aet): reason 7
            try:
                with self.sessions() as session:
                    decision = peers.authorise(session, st.calling, st.address, "associate",
                                               self.settings.dicom_accept_any_peer)
            except Exception as exc:  # noqa: BLE001 - no database, no decision: try later
                log.exception("peer lookup for %s failed", st.calling)
                st.reason = f"peer lookup failed ({type(exc).__name__}); try again later"
                self._reject(assoc, REJECT_TRANSIENT)
                return
            if not decision.allowed:
                st.reason = decision.reason
                self._reject(assoc, REJECT_CALLING_AE)
                return
            st.decision = decision
            prefer_sender_transfer_syntax(assoc)
        except Exception:  # noqa: BLE001 - never accept by accident
            log.exception("association request could not be checked; rejecting it")
            if not assoc.is_rejected:
                self._reject(assoc, REJECT_TRANSIENT)

    @staticmethod
    def _reject(assoc: Association, codes: tuple[int, int, int]) -> None:
        """A-ASSOCIATE-RJ from EVT_REQUESTED, the way pynetdicom's own negotiation does it."""
        assoc.acse.send_reject(*codes)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def on_accepted(self, event: evt.Event) -> None:
        st = self._state(event.assoc)
        log.info("association accepted from %s (%d contexts)", st.calling,
                 len(event.assoc.accepted_contexts))
        self._audit_association(st, "success")

    def on_rejected(self, event: evt.Event) -> None:
        st = self._state(event.assoc)
        rj = event.assoc.acceptor.primitive
        codes = tuple(int(getattr(rj, k, 0) or 0)
                      for k in ("result", "result_source", "diagnostic"))
        why = st.reason or str(getattr(rj, "reason_str", "") or "rejected")
        st.decision = None
        log.warning("association from %s (%s) rejected: %s", st.calling, st.address, why)
        self._audit_association(st, "refused", why, codes)

    def on_closed(self, event: evt.Event) -> None:
        st = self._assocs.get(event.assoc)
        if st is None or st.decision is None or st.closed:
            return  # rejected associations were audited when rejected
        st.closed = True
        c = st.counts
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association from %s %s: %d stored, %d already stored, %d failed, "
                 "%d refused, %d queries, %d moves, %d gets", st.calling, how, c["stored"],
                 c["identical"], c["failed"], c["refused"], c["find"], c["move"], c["get"])
        self._audit(st.actor, "dicom.release", "dicom_association", st.id,
                    "success" if how == "released" else "aborted", {
                        "association": st.id, "calling_ae": st.calling,
                        "address": st.address, "tls": st.tls, "how": how,
                        "stored": c["stored"], "identical": c["identical"],
                        "failed": c["failed"], "refused": c["refused"], "finds": c["find"],
                        "moves": c["move"], "gets": c["get"],
                        "study_uids": list(st.studies),
                        "study_uids_truncated": st.studies_truncated,
                        "seconds": round(time.monotonic() - st.started, 3)})

    def on_tls_failure(self, client_address: Any, exc: BaseException) -> None:
        address = str(client_address[0]) if isinstance(client_address, tuple) else ""
        reason = f"TLS handshake failed: {exc}"[:200]
        log.warning("DICOM TLS connection from %s refused: %s", address, exc)
        self._audit("dicom:unknown", "dicom.tls", "dicom_association", "", "refused",
                    {"address": address, "reason": reason})

    def refused_off_context(self, assoc: Association, msg: Any, context: PresentationContext
                            ) -> None:
        st = self._state(assoc)
        st.counts["failed" if isinstance(msg, C_STORE) else "find"] += 1
        log.warning("%s from %s on presentation context %s (%s) refused (0x%04X): "
                    "Affected SOP Class UID %s does not belong there",
                    "C-STORE" if isinstance(msg, C_STORE) else "C-FIND", st.calling,
                    context.context_id, context.abstract_syntax, SOP_CLASS_NOT_SUPPORTED,
                    msg.AffectedSOPClassUID)

    def _count(self, event: evt.Event, what: str) -> None:
        st = self._assocs.get(event.assoc)
        if st is not None:
            st.counts[what] += 1

    # -- a data set announced and never sent -------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(0.25):
            for server in (self.server, self.tls_server):
                for assoc in (server.active_associations if server is not None else []):
                    try:
                        self._complete_missing_data_set(assoc)
                    except Exception:  # noqa: BLE001 - the watchdog must keep watching
                        log.exception("data set watchdog failed for one association")

    def _complete_missing_data_set(self, assoc: Association) -> None:
        """Complete, as empty, a request whose announced data set has not begun to arrive
        after :attr:`announced_data_set_wait` s of silence from the peer.

        The empty last data fragment (PS3.8 E.2, message control header 0x02) is queued on
        the DUL as if received, so pynetdicom's own thread completes the message and the
        ordinary handler answers it (0xA900 for a C-STORE)."""
        st = self._assocs.get(assoc)
        msg = assoc.dimse.message
        waiting = (st is not None and msg is not None and type(msg) is not DIMSEMessage
                   and msg.command_set.get("CommandDataSetType", 0x0101) != 0x0101
                   and msg.data_set is not None and msg.data_set.tell() == 0
                   and getattr(msg, "_data_set_file", None) is None)
        if st is None:
            return
        if not waiting:
            st.waiting = None
            return
        now = time.monotonic()
        if st.waiting is None or st.waiting[0] is not msg:
            st.waiting = (msg, now, False)
            return
        _, since, completed = st.waiting
        wait = self.announced_data_set_wait
        if completed or now - since < wait or _peer_silent_for(assoc) < wait:
            return
        if not assoc.is_established or assoc.dul.state_machine.current_state != "Sta6":
            return
        st.waiting = (msg, since, True)
        log.warning("%s from %s announced a data set and sent none for %.1f s; answering it "
                    "as an empty data set", type(msg).__name__.replace("_", "-"), st.calling,
                    now - since)
        last = P_DATA()
        last.presentation_data_value_list.append([int(msg.context_id), b"\x02"])
        assoc.dul._recv_pdu.put(P_DATA_TF(last))
        assoc.dul.event_queue.put("Evt10")  # P-DATA-TF received: DT-2, on the DUL thread

    # -- DIMSE services -----------------------------------------------------------------

    def on_c_echo(self, event: evt.Event) -> int:
        return 0x0000  # PS3.4 A.4: Verification success

    def on_c_store(self, event: evt.Event) -> Dataset | int:
        req = event.request
        sop_class = str(req.AffectedSOPClassUID)
        sop_inst = str(req.AffectedSOPInstanceUID)
        tsuid = str(event.context.transfer_syntax)
        st = self._state(event.assoc)
        calling = st.calling
        if not st.may("store"):
            st.counts["refused"] += 1
            log.warning("C-STORE %s from %s refused (0x%04X): no store right", sop_inst,
                        calling, NOT_AUTHORISED)
            return _status(NOT_AUTHORISED, f"{calling} may not store to this AE")
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
        if stored.study_uid not in st.studies:
            if len(st.studies) < AUDIT_MAX_STUDIES:
                st.studies[stored.study_uid] = None
            else:
                st.studies_truncated = True
        log.debug("C-STORE %s from %s stored (%s)", sop_inst, calling,
                  "new" if stored.created else "identical copy already stored")
        return 0x0000

    @staticmethod
    def _check_identity(data: memoryview, tsuid: str, sop_class: str,
                        sop_inst: str) -> Dataset | None:
        """PS3.7 9.1.1.1: the data set's SOP Class/Instance UIDs are the request's affected
        ones. A data set with others, or none at all, is refused with 0xA900 (PS3.4 B.2.3: the
        data set does not match the SOP class); one without them goes on to the store's
        validation, which refuses it as it refuses the same data set over STOW-RS."""
        if len(data) == 0:
            return _status(0xA900, "the data set is empty")
        try:
            ds_class, ds_inst = dataset_identity(data, tsuid)
        except Exception as exc:  # noqa: BLE001 - any parse failure: cannot understand
            return _status(0xC000, f"data set not readable: {exc}")
        if not ds_class or not ds_inst:
            # missing, or the data set ends before them: the store's one validation tells
            # which (0xA900 or 0xC000), as it does for STOW-RS
            return None
        if ds_class != sop_class:
            return _status(0xA900, "SOPClassUID differs from Affected SOP Class UID")
        if ds_inst != sop_inst:
            return _status(0xA900, "SOPInstanceUID differs from Affected SOP Instance UID")
        return None

    def on_c_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        st = self._state(event.assoc)
        st.counts["find"] += 1
        model = str(event.request.AffectedSOPClassUID)
        record: dict[str, Any] = {
            "association": st.id, "calling_ae": st.calling,
            "model": "patient" if model == PatientRootQueryRetrieveInformationModelFind
            else "study", "level": "", "keys": [], "matches": 0}

        def audited(outcome: str, status: int) -> None:
            self._audit(st.actor, "dicom.find", "dicom_query", st.id, outcome,
                        record | {"status": f"0x{status:04X}"})

        failure: tuple[int, str] | None = None
        try:
            identifier = event.identifier
            record["level"] = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
            level, q, return_keys, unsupported = identifier_to_query(identifier, model)
            record["keys"], record["ignored_keys"] = sorted(q.filters), sorted(unsupported)
        except query.QueryError as exc:
            failure = (FIND_IDENTIFIER_DOES_NOT_MATCH, str(exc))
        except Exception as exc:  # noqa: BLE001 - an identifier that does not decode
            failure = (FIND_UNABLE_TO_PROCESS, f"unable to process: {type(exc).__name__}")
        if not st.may("query"):
            log.warning("C-FIND from %s refused (0x%04X): no query right", st.calling,
                        NOT_AUTHORISED)
            audited("refused", NOT_AUTHORISED)
            yield _status(NOT_AUTHORISED, f"{st.calling} may not query this AE"), None
            return
        if failure is not None:
            log.info("C-FIND from %s refused (0x%04X): %s", st.calling, *failure)
            audited("failure", failure[0])
            yield _status(*failure), None
            return
        try:
            with self.sessions() as session:
                matches = query.search(session, q)
        except query.QueryError as exc:
            log.info("C-FIND from %s refused: %s", st.calling, exc)
            audited("failure", FIND_IDENTIFIER_DOES_NOT_MATCH)
            yield _status(FIND_IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down
            log.exception("C-FIND from %s failed", st.calling)
            audited("failure", FIND_UNABLE_TO_PROCESS)
            yield _status(FIND_UNABLE_TO_PROCESS, f"unable to process: {type(exc).__name__}"), None
            return
        if level == "PATIENT":
            matches = _patients(matches)
        pending = FIND_PENDING_OPTIONAL_KEYS_UNSUPPORTED if unsupported else FIND_PENDING
        for n, match in enumerate(matches):
            if event.is_cancelled:
                record["matches"] = n
                audited("cancelled", FIND_CANCELLED)
                yield FIND_CANCELLED, None
                return
            yield pending, match_to_identifier(match, level, return_keys, self.settings.ae_title)
        record["matches"] = len(matches)
        audited("success", 0x0000)
        # pynetdicom sends the final 0x0000 Success response after the last pending one.

    # -- C-MOVE and C-GET ---------------------------------------------------------------

    def begin_retrieve(self, assoc: Association, msg: C_MOVE | C_GET,
                       context: PresentationContext) -> C_MOVE | C_GET | None:
        """Decide on a C-MOVE or C-GET before any sub-operation: the refusal to send at once,
        or None with the plan kept for the handler (:class:`_Retrieval`).

        In order: the retrieve right (0x0124), the identifier (0xC000 when it does not decode,
        0xA900 when it is not a retrieve identifier of this model), the move destination
        (0xA801 unless a known peer with a host and port), the matching (0xA900, or 0xC000 when
        the database fails), and at most 65535 instances (0xA702)."""
        st = self._state(assoc)
        service = "move" if isinstance(msg, C_MOVE) else "get"
        st.counts[service] += 1
        model = str(msg.AffectedSOPClassUID)
        record: dict[str, Any] = {
            "association": st.id, "calling_ae": st.calling,
            "model": "patient" if model in PATIENT_ROOT_MODELS else "study",
            "level": "", "keys": [], "instances": 0}
        if service == "move":
            record["destination"] = str(msg.MoveDestination or "").strip()

        def refuse(code: int, comment: str, outcome: str = "failure") -> C_MOVE | C_GET:
            log.warning("C-%s from %s refused (0x%04X): %s", service.upper(), st.calling, code,
                        comment)
            self._audit(st.actor, f"dicom.{service}", "dicom_retrieve", st.id, outcome,
                        record | {"status": f"0x{code:04X}"})
            return retrieve_response(msg, code, comment)

        if not st.may("retrieve"):
            return refuse(NOT_AUTHORISED, f"{st.calling} may not retrieve from this AE",
                          "refused")
        try:
            ts = context.transfer_syntax[0]
            identifier = decode(msg.Identifier, ts.is_implicit_VR, ts.is_little_endian,
                                ts.is_deflated)
            if identifier is None:
                raise ValueError("no identifier")
            record["level"] = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
        except Exception as exc:  # noqa: BLE001 - an identifier that does not decode
            return refuse(RETRIEVE_UNABLE_TO_PROCESS,
                          f"identifier not readable: {type(exc).__name__}")
        try:
            request = retrieve.parse_identifier(identifier, model in PATIENT_ROOT_MODELS)
        except retrieve.RetrieveError as exc:
            return refuse(RETRIEVE_IDENTIFIER_DOES_NOT_MATCH, str(exc))
        record["level"], record["keys"] = request.level, sorted(request.keys)
        destination: tuple[str, int] | None = None
        unknown = ""  # why the move destination is unknown
        items: list[retrieve.Item] = []
        try:
            with self.sessions() as session:
                if service == "move":
                    destination, unknown = self._move_destination(session,
                                                                  record["destination"])
                if not unknown:
                    items = retrieve.matching_instances(session, request)
        except query.QueryError as exc:
            return refuse(RETRIEVE_IDENTIFIER_DOES_NOT_MATCH, str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down
            log.exception("C-%s from %s failed", service.upper(), st.calling)
            return refuse(RETRIEVE_UNABLE_TO_PROCESS, f"unable to process: {type(exc).__name__}")
        if unknown:
            return refuse(MOVE_DESTINATION_UNKNOWN, unknown)
        record["instances"] = len(items)
        if len(items) > MAX_SUB_OPERATIONS:
            return refuse(RETRIEVE_TOO_MANY, f"{len(items)} instances match; at most "
                          f"{MAX_SUB_OPERATIONS} per request")
        st.retrieval = _Retrieval(service, record, items, destination,
                                  move_contexts(items) if service == "move" else [])
        assoc.bind(evt.EVT_DIMSE_SENT, self.on_retrieve_response)
        return None

    @staticmethod
    def _move_destination(session: Session, ae_title: str) -> tuple[tuple[str, int] | None, str]:
        """(host, port) of a move destination, or None and why: it must be a known peer with
        a single host (an address or a name, not "any" or a network) and a port."""
        peer = peers.find(session, ae_title) if ae_title else None
        if peer is None:
            return None, f"move destination {ae_title!r} is not a known peer"
        if not peer.host or "/" in peer.host or not peer.port:
            return None, f"move destination {peer.ae_title!r} has no host and port"
        return (peer.host, int(peer.port)), ""

    def on_retrieve_response(self, event: evt.Event) -> None:
        """EVT_DIMSE_SENT during a C-MOVE/C-GET: keep the status and counts of the last
        C-MOVE-RSP/C-GET-RSP, which end_retrieve audits."""
        msg = event.message
        st = self._assocs.get(event.assoc)
        if st is None or st.retrieval is None or not isinstance(msg, C_MOVE_RSP | C_GET_RSP):
            return
        cs = msg.command_set
        st.retrieval.last = {k: int(cs[k].value) for k in (
            "Status", "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
            "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")
            if k in cs and cs[k].value is not None}

    def end_retrieve(self, assoc: Association) -> None:
        """After pynetdicom has served an accepted C-MOVE/C-GET: audit it with the counts of
        its last response (``aborted`` when no final response went out)."""
        st = self._assocs.get(assoc)
        plan = st.retrieval if st is not None else None
        if st is None or plan is None:
            return
        st.retrieval = None
        with contextlib.suppress(Exception):
            assoc.unbind(evt.EVT_DIMSE_SENT, self.on_retrieve_response)
        last = plan.last
        status = last.get("Status")
        if status is None or status == RETRIEVE_PENDING:
            outcome = "aborted"
        elif status == RETRIEVE_CANCELLED:
            outcome = "cancelled"
        elif status == 0x0000:
            outcome = "success"
        elif status == 0xB000:
            outcome = "warning"
        else:
            outcome = "failure"
        detail = plan.record | {
            "status": f"0x{status:04X}" if status is not None else None,
            "completed": last.get("NumberOfCompletedSuboperations", 0),
            "failed": last.get("NumberOfFailedSuboperations", 0),
            "warning": last.get("NumberOfWarningSuboperations", 0),
            "remaining": last.get("NumberOfRemainingSuboperations", 0)}
        log.info("C-%s from %s%s: %s, %d instances: %d completed, %d failed, %d warning",
                 plan.service.upper(), st.calling,
                 f" to {plan.record['destination']}" if plan.service == "move" else "",
                 detail["status"], len(plan.items), detail["completed"], detail["failed"],
                 detail["warning"])
        self._audit(st.actor, f"dicom.{plan.service}", "dicom_retrieve", st.id, outcome, detail)

    def _plan(self, event: evt.Event, service: str) -> _Retrieval:
        st = self._assocs.get(event.assoc)
        plan = st.retrieval if st is not None else None
        if plan is None or plan.service != service:
            # begin_retrieve runs before every C-MOVE/C-GET; pynetdicom answers 0xC5xx/0xC4xx
            raise RuntimeError(f"C-{service.upper()} without a plan")
        return plan

    def on_c_move(self, event: evt.Event) -> Iterator[Any]:
        """pynetdicom's EVT_C_MOVE protocol: the destination, the number of sub-operations,
        then one (status, data set) per instance; pynetdicom associates with the destination as
        MedGate's AE title, proposing :func:`move_contexts`, and sends each data set by C-STORE."""
        plan = self._plan(event, "move")
        assert plan.destination is not None
        yield (*plan.destination, {"contexts": plan.contexts})
        yield len(plan.items)
        yield from self._sub_operations(event, plan)

    def on_c_get(self, event: evt.Event) -> Iterator[Any]:
        """pynetdicom's EVT_C_GET protocol: the number of sub-operations, then one (status,
        data set) per instance, sent by C-STORE on this association's storage contexts where
        the requestor took the SCP role. One without such a context fails (counted failed)."""
        plan = self._plan(event, "get")
        yield len(plan.items)
        yield from self._sub_operations(event, plan)

    def _sub_operations(self, event: evt.Event, plan: _Retrieval
                        ) -> Iterator[tuple[int, Dataset | None]]:
        for item in plan.items:
            if event.is_cancelled:
                # PS3.4 C.4.2.3.1 / C.4.3.3.1: C-CANCEL ends the sub-operations; pynetdicom
                # sends 0xFE00 with the counts so far and the Failed SOP Instance UID List.
                yield RETRIEVE_CANCELLED, None
                return
            yield RETRIEVE_PENDING, self._instance(item)

    def _instance(self, item: retrieve.Item) -> Dataset:
        """The stored instance as pydicom reads it (pynetdicom encodes it again in the transfer
        syntax of the context; for an unchanged data set in the stored syntax that gives back
        the stored bytes). A file that cannot be read becomes a data set with only the two UIDs
        and no transfer syntax, which pynetdicom cannot send: that sub-operation fails and its
        SOP Instance UID goes into the Failed SOP Instance UID List."""
        path = self.settings.store_dir / item.path
        try:
            return pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - counted as a failed sub-operation
            log.error("stored instance %s (%s) cannot be read: %s", item.sop_instance_uid, path,
                      exc)
            failed = Dataset()
            failed.SOPClassUID = item.sop_class_uid
            failed.SOPInstanceUID = item.sop_instance_uid
            return failed


def _peer_silent_for(assoc: Association) -> float:
    """Seconds since the peer last sent data on this connection (Linux TCP_INFO
    tcpi_last_data_recv); infinity where the platform cannot tell."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)  # type: ignore
        return struct.unpack_from("=I", info, 52)[0] / 1000.0
    except (AttributeError, OSError, struct.error):
        return float("inf")


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
