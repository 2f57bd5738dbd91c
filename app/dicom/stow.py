"""STOW-RS below the router: the Studies Store Transaction of PS3.18 10.5.

Receiving and storing are two phases, so that a broken request changes nothing:

1. **receive** - the ``multipart/related; type="application/dicom"`` body is parsed as it
   streams in (:class:`app.dicom.multipart.MultipartReader`); each part goes straight to its own
   temporary file under ``store/tmp`` through :func:`app.dicom.store.spool` (hashed while it is
   written: one pass over the bytes), and its fsync starts at once in the background
   (:func:`app.dicom.store.fsync_soon`) while the next part arrives. Memory holds one block of
   the body (256 KiB) at a time and each part's first 16 KiB (its header, parsed from memory
   in phase 2; at most 1 MiB of them per request), whatever the size of the upload.
2. **store** - only once the close delimiter has arrived and the whole body stayed within
   ``max_upload_bytes`` is each spooled part validated, indexed and moved into the store by
   :func:`app.dicom.store.store_many`, together, each with its own outcome: every file's fsync
   awaited, one fsync per folder, one transaction; only then is the response sent.

Any body-level failure - the Content-Type is not ours (415), the boundary never appears or the
body ends before the close delimiter (400), the body grows past the size limit (413), the client
goes away - removes every temporary file of the request and stores nothing: no file, no row.

The response is the Store Instances Response Module (PS3.18 10.5.3, Annex I) as DICOM JSON:
ReferencedSOPSequence for stored instances (with their RetrieveURL), FailedSOPSequence with a
FailureReason for each refused one, and the study's RetrieveURL when the request concerned one
study. This module never talks HTTP; it gets chunks and returns a result.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from pydicom.dataset import Dataset

from app.dicom import dicomjson, store
from app.dicom.multipart import MultipartError, MultipartReader, TooManyParts, parse_media_type
from app.dicom.store import CANNOT_UNDERSTAND, PROCESSING_FAILURE, Stored, StoreError
from app.faults import crash_point

log = logging.getLogger(__name__)

DICOM = "application/dicom"
SOURCE = "stow-rs"
# After a body-level error, read (and discard) at most this much more of the body so that a
# client that is still sending can read our answer instead of a reset connection.
DRAIN_CAP = 8 * 1024 * 1024
_BINARY_ENCODINGS = {"", "binary", "8bit", "7bit"}
# PS3.10 7.1: a 128-byte preamble, then "DICM"; a part shorter than that or without the prefix
# is refused before any temporary file is made for it.
_PREFIX = 132
# The first bytes of each part (store.HEAD_BYTES) are kept for its validation, up to this much
# per request; the parts after that are validated from their files.
HEADS_KEPT = 1024 * 1024


class BodyError(Exception):
    """The request body as a whole is refused; nothing of it was stored."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail


def request_boundary(content_type: str | None) -> str:
    """The boundary of a STOW-RS request, or BodyError (PS3.18 10.5.1.2: 415 for a media type
    the origin server does not support, 400 for a multipart header it cannot use)."""
    mt = parse_media_type(content_type or "")
    if mt.type != "multipart/related":
        raise BodyError(415, "unsupported-media-type",
                        f"STOW-RS takes multipart/related; type=\"{DICOM}\", not "
                        f"{mt.type or 'a body without Content-Type'}")
    part_type = parse_media_type(mt.params.get("type", DICOM)).type
    if part_type != DICOM:
        raise BodyError(415, "unsupported-media-type",
                        f"multipart/related of type {part_type!r} is not supported; MedGate "
                        f"stores type=\"{DICOM}\" (Part 10 files)")
    boundary = mt.params.get("boundary", "")
    if not boundary:
        raise BodyError(400, "malformed-multipart", "the Content-Type has no boundary parameter")
    return boundary


def check_declared_length(content_length: str | None, limit: int) -> None:
    """Refuse before reading when the declared body is already over the limit."""
    if content_length and content_length.strip().isdigit() and int(content_length) > limit:
        raise BodyError(413, "payload-too-large",
                        f"the body of {int(content_length)} bytes exceeds the upload limit of "
                        f"{limit} bytes (MEDGATE_MAX_UPLOAD_BYTES); nothing was stored")


@dataclass
class Received:
    """One part, spooled (``tmp``) or refused before storing (``refused``)."""

    index: int
    tmp: Path | None = None
    sha256: str = ""
    size: int = 0
    refused: StoreError | None = None
    head: bytes = b""            # its first bytes (store.HEAD_BYTES), for validation
    fsync: Future | None = None  # started as soon as it was spooled


@dataclass
class Outcome:
    index: int
    stored: Stored | None = None
    error: StoreError | None = None


@dataclass
class StowResult:
    status: int
    body: dict
    outcomes: list[Outcome]
    body_bytes: int = 0
    peak_buffered: int = 0
    studies: list[str] = field(default_factory=list)

    @property
    def stored(self) -> list[Stored]:
        return [o.stored for o in self.outcomes if o.stored is not None]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def audit_events(self) -> Iterator[tuple[str, str, str, dict]]:
        """(resource_type, resource_id, outcome, detail) for the audit log: one per study that
        received instances, one for the refused parts."""
        for study in self.studies:
            mine = [s for s in self.stored if s.study_uid == study]
            yield ("study", study, "success",
                   {"stored": sum(s.created for s in mine), "already_stored":
                    sum(not s.created for s in mine)})
        if self.failed:
            yield ("study", self.studies[0] if len(self.studies) == 1 else "", "failure",
                   {"failed": [{"part": o.index + 1, "sop_instance_uid": o.error.sop_instance_uid,
                                "reason": f"0x{o.error.status:04X}", "detail": o.error.reason}
                               for o in self.failed]})


def _limited(source: Iterator[bytes], limit: int, counter: list[int]) -> Iterator[bytes]:
    for chunk in source:
        counter[0] += len(chunk)
        if counter[0] > limit:
            raise BodyError(413, "payload-too-large",
                            f"the body exceeds the upload limit of {limit} bytes "
                            "(MEDGATE_MAX_UPLOAD_BYTES); nothing was stored")
        yield chunk


def _drain(source: Iterator[bytes], cap: int = DRAIN_CAP) -> None:
    seen = 0
    try:
        for chunk in source:
            seen += len(chunk)
            if seen > cap:
                return
    except Exception:  # noqa: BLE001 - the request failed already; this is courtesy only
        return


def discard(received: Iterable[Received]) -> None:
    for r in received:
        if r.tmp is not None:
            r.tmp.unlink(missing_ok=True)


def _head(part_chunks: Iterator[bytes]) -> bytes:
    """At least the first 132 bytes of a part (fewer only when the part is shorter)."""
    head = b""
    for chunk in part_chunks:
        head += chunk
        if len(head) >= _PREFIX:
            break
    return head


def receive(chunks: Iterable[bytes], boundary: str, limit: int,
            max_parts: int | None = None) -> tuple[list[Received], MultipartReader, int]:
    """Phase 1: spool every part. Returns (parts, reader, body bytes); BodyError leaves
    nothing behind."""
    source = iter(chunks)
    counter = [0]
    received: list[Received] = []
    kept = 0
    try:
        reader = MultipartReader(_limited(source, limit, counter), boundary,
                                 max_parts=max_parts)
        for part in reader:
            ptype = parse_media_type(part.content_type).type if part.content_type else DICOM
            encoding = part.headers.get("content-transfer-encoding", "").strip().lower()
            if ptype != DICOM or encoding not in _BINARY_ENCODINGS:
                part.drain()
                what = ptype if ptype != DICOM else f"Content-Transfer-Encoding {encoding}"
                received.append(Received(part.index, size=part.size, refused=StoreError(
                    CANNOT_UNDERSTAND, f"part {part.index + 1} is {what}; the Store "
                    f"transaction takes {DICOM} parts in binary")))
                continue
            content = part.chunks()
            head = _head(content)
            if len(head) < _PREFIX or head[128:_PREFIX] != b"DICM":
                part.drain()
                received.append(Received(part.index, size=part.size, refused=StoreError(
                    CANNOT_UNDERSTAND, f"part {part.index + 1} is not a DICOM Part 10 file: "
                    + (f"{part.size} bytes, less than the 128-byte preamble and DICM prefix"
                       if len(head) < _PREFIX else "no DICM prefix after the 128-byte "
                       "preamble (PS3.10 7.1)"))))
                continue
            tmp, sha, size, first, _ = store.spool_part(chain([head], content))
            kept += len(first)
            received.append(Received(part.index, tmp, sha, size,
                                     head=first if kept <= HEADS_KEPT else b"",
                                     fsync=store.fsync_soon(tmp)))
            crash_point("stow.spooled", len(received))
        if not received:
            raise BodyError(400, "malformed-multipart", "the multipart body has no parts")
    except TooManyParts as exc:
        discard(received)
        _drain(source)
        raise BodyError(413, "too-many-parts",
                        f"{exc} (MEDGATE_MAX_PARTS_PER_REQUEST); nothing was stored. Send the "
                        "instances in several requests") from exc
    except MultipartError as exc:
        discard(received)
        _drain(source)
        raise BodyError(400, "malformed-multipart", str(exc)) from exc
    except BodyError as exc:
        discard(received)
        if exc.slug != "upload-interrupted":
            _drain(source)
        raise
    except BaseException:
        discard(received)
        raise
    return received, reader, counter[0]


def store_received(session_factory, received: list[Received],
                   expected_study: str | None = None) -> list[Outcome]:
    """Phase 2: store the spooled parts together (one transaction, see ``store.store_many``);
    every part gets an outcome, none is left on disk."""
    outcomes: dict[int, Outcome] = {}
    batch: list[store.Spooled] = []
    indexes: list[int] = []
    try:
        for r in received:
            if r.refused is not None or r.tmp is None:
                outcomes[r.index] = Outcome(r.index, error=r.refused)
                continue
            batch.append(store.Spooled(r.tmp, r.sha256, r.size, r.head, r.fsync))
            indexes.append(r.index)
            r.tmp = None
        try:
            results = store.store_many(session_factory, batch, expected_study, SOURCE)
        except Exception as exc:  # noqa: BLE001 - reported per part, never half-stored
            log.exception("STOW-RS request could not be stored")
            results = [StoreError(PROCESSING_FAILURE,
                                  f"processing failure: {type(exc).__name__}")] * len(batch)
        for index, result in zip(indexes, results, strict=True):
            outcomes[index] = (Outcome(index, error=result) if isinstance(result, StoreError)
                               else Outcome(index, stored=result))
    finally:
        discard(received)
        for item in batch:
            item.tmp.unlink(missing_ok=True)
    return [outcomes[r.index] for r in received]


def http_status(outcomes: list[Outcome]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored; 202 some stored, some failed; none stored:
    400 when every failure is bad syntax (0xCxxx, cannot understand), else 409 (conflict, e.g.
    SOP Class not supported, study mismatch, duplicate, or a mixture of reasons)."""
    failed = [o.error for o in outcomes if o.error is not None]
    if not failed:
        return 200
    if len(failed) < len(outcomes):
        return 202
    if all(0xC000 <= e.status <= 0xCFFF for e in failed):
        return 400
    return 409


def study_url(base_url: str, study: str) -> str:
    return f"{base_url}/studies/{study}"


def instance_url(base_url: str, study: str, series: str, sop: str) -> str:
    return f"{base_url}/studies/{study}/series/{series}/instances/{sop}"


def response_dataset(outcomes: list[Outcome], base_url: str,
                     expected_study: str | None = None) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-2 / Annex I)."""
    ds = Dataset()
    stored = [o.stored for o in outcomes if o.stored is not None]
    studies = sorted({s.study_uid for s in stored})
    if expected_study or len(studies) == 1:
        ds.RetrieveURL = study_url(base_url, expected_study or studies[0])
    failed = [o.error for o in outcomes if o.error is not None]
    if failed:
        items = []
        for err in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = err.sop_class_uid or None
            item.ReferencedSOPInstanceUID = err.sop_instance_uid or None
            item.FailureReason = err.status
            items.append(item)
        ds.FailedSOPSequence = items
    if stored:
        items = []
        for s in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = s.sop_class_uid
            item.ReferencedSOPInstanceUID = s.sop_instance_uid
            item.RetrieveURL = instance_url(base_url, s.study_uid, s.series_uid,
                                            s.sop_instance_uid)
            items.append(item)
        ds.ReferencedSOPSequence = items
    return ds


def stow(session_factory, chunks: Iterable[bytes], content_type: str | None, limit: int,
         base_url: str, expected_study: str | None = None,
         max_parts: int | None = None) -> StowResult:
    """Receive a whole STOW-RS body, then store its instances; BodyError for a refused body."""
    boundary = request_boundary(content_type)
    received, reader, body_bytes = receive(chunks, boundary, limit, max_parts)
    outcomes = store_received(session_factory, received, expected_study)
    refused = Counter(f"0x{o.error.status:04X}" for o in outcomes if o.error is not None)
    if refused:
        # one line per request, however many parts: the reasons go back in the response
        first = next(o for o in outcomes if o.error is not None)
        log.info("STOW-RS: %d of %d parts refused (%s); first: part %d, %s", sum(refused.values()),
                 len(outcomes), ", ".join(f"{k} x{n}" for k, n in sorted(refused.items())),
                 first.index + 1, first.error.reason)
    ds = response_dataset(outcomes, base_url, expected_study)
    studies = sorted({o.stored.study_uid for o in outcomes if o.stored is not None})
    return StowResult(http_status(outcomes), dicomjson.dataset_json(ds), outcomes,
                      body_bytes=body_bytes, peak_buffered=reader.peak_buffered,
                      studies=studies)


__all__ = ["BodyError", "StowResult", "check_declared_length", "receive", "request_boundary",
           "response_dataset", "store_received", "stow"]
