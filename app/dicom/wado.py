"""Retrieval and search helpers below the DICOMweb router.

- WADO-RS Retrieve (PS3.18 10.4): instances, series and studies as
  ``multipart/related; type="application/dicom"`` - the stored Part 10 files byte for byte,
  read in chunks as the response is sent (never loaded whole); ``/metadata`` as DICOM JSON
  (PS3.18 F.2), headers only, bulk data by ``BulkDataURI``; ``/bulkdata`` for those URIs.
- Frames (PS3.18 10.4.1.1.4): chosen frames of one instance, one part each, as stored or
  decoded to native little endian (``app.dicom.frames``); rendered and thumbnail resources
  (PS3.18 10.4.1.1.3) as JPEG or PNG (``app.dicom.render``).
- QIDO-RS Search (PS3.18 10.6): query parameters to an :class:`app.dicom.query.Query`, the
  attributes each level returns (PS3.18 10.6.3.3), ``includefield`` from the index or, for
  attributes the index does not hold, from one instance's header on disk.

Instances are not transcoded: files go out in the transfer syntax they were received in, and a
request whose Accept header insists on another syntax gets 406 (PS3.18 8.7.3.5). Frames can
also be decoded to native pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.tag import Tag
from pydicom.uid import UID
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import Instance, Series, Study
from app.dicom import dicomjson, frames, render
from app.dicom.frames import FRAME_MEDIA_TYPES, Unframeable
from app.dicom.multipart import file_chunks, parse_accept, parse_media_type, write_parts
from app.dicom.query import DEFAULT_RETURN, Query, QueryError, keyword, search

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MAX_RESULTS = 1000  # QIDO answers at most this many matches per request (PS3.18 8.3.4.4)
RESERVED_PARAMS = {"includefield", "limit", "offset", "fuzzymatching"}

class NotAcceptable(Exception):
    """The Accept header asks for a representation MedGate cannot give (406)."""


class NotFound(Exception):
    """No such study, series, instance or element (404)."""


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    instance_number: int | None = None


# -- content negotiation ---------------------------------------------------------------------
def check_accept_dicom(accept: str | None, transfer_syntaxes: Iterable[str]) -> None:
    """Accept ``*/*``, ``multipart/*``, ``multipart/related`` of type application/dicom (or
    no type), and ``application/dicom``, with ``transfer-syntax`` absent, ``*`` or equal to
    the syntax of every file. Absent transfer-syntax is served as stored (no transcoding)."""
    syntaxes = set(transfer_syntaxes)
    wanted = []
    for mr in parse_accept(accept):
        inner = mr
        if mr.type == "multipart/related":
            inner = parse_media_type(mr.params.get("type", DICOM))
            inner.params.update({k: v for k, v in mr.params.items() if k == "transfer-syntax"})
        elif mr.type not in ("*/*", "multipart/*", DICOM, "application/*"):
            wanted.append(mr.type)
            continue
        if inner.type not in (DICOM, "*/*", "application/*"):
            wanted.append(f"{mr.type}; type={inner.type}")
            continue
        ts = inner.params.get("transfer-syntax", "*")
        if ts == "*" or syntaxes <= {ts}:
            return
        wanted.append(f"transfer-syntax={ts}")
    raise NotAcceptable(
        "MedGate sends instances as stored (multipart/related; type=\"application/dicom\"; "
        f"transfer-syntax={', '.join(sorted(syntaxes)) or '*'}) and does not transcode; "
        f"asked for: {'; '.join(wanted) or accept}")


def check_accept_json(accept: str | None) -> None:
    for mr in parse_accept(accept):
        if mr.type in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
    raise NotAcceptable(f"this resource is {DICOM_JSON}; asked for: {accept}")


# -- WADO-RS ---------------------------------------------------------------------------------
def find_instances(session: Session, study: str, series: str | None = None,
                   sop: str | None = None) -> list[InstanceRef]:
    """The instances of a study / series / one instance, in series and instance order;
    NotFound when there are none."""
    stmt = (select(Instance, Series.series_uid).join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id).where(Study.study_uid == study))
    if series:
        stmt = stmt.where(Series.series_uid == series)
    if sop:
        stmt = stmt.where(Instance.sop_instance_uid == sop)
    stmt = stmt.order_by(Series.series_number, Series.id, Instance.instance_number,
                         Instance.id)
    root = get_settings().store_dir
    refs = [InstanceRef(study, series_uid, inst.sop_instance_uid, inst.sop_class_uid,
                        inst.transfer_syntax_uid, root / inst.path, inst.instance_number)
            for inst, series_uid in session.execute(stmt)]
    if not refs:
        if sop:
            what = f"instance {sop} in series {series} of study {study}"
        elif series:
            what = f"series {series} of study {study}"
        else:
            what = f"study {study}"
        raise NotFound(f"no {what} is stored")
    return refs


def multipart_instances(refs: list[InstanceRef], boundary: str) -> Iterator[bytes]:
    """The stored files as one multipart/related body, read chunk by chunk while sent."""
    parts = (({"Content-Type": f"{DICOM}; transfer-syntax={r.transfer_syntax_uid}"},
              file_chunks(r.path)) for r in refs)
    return write_parts(parts, boundary)


def instance_url(base_url: str, ref: InstanceRef) -> str:
    return (f"{base_url}/studies/{ref.study_uid}/series/{ref.series_uid}"
            f"/instances/{ref.sop_instance_uid}")


def read_header(path: Path) -> Dataset:
    """A stored file's dataset with values over 1 KiB left on disk until used."""
    return pydicom.dcmread(path, defer_size=dicomjson.BULK_THRESHOLD)


def instance_metadata(ref: InstanceRef, base_url: str) -> dict[str, Any]:
    ds = read_header(ref.path)
    url = instance_url(base_url, ref)
    return dicomjson.dataset_json(ds, bulk_uri=lambda p: f"{url}/bulkdata/{p}")


def metadata_json(refs: list[InstanceRef], base_url: str) -> Iterator[bytes]:
    """A JSON array of the instances' metadata, produced one instance at a time."""
    yield b"["
    for i, ref in enumerate(refs):
        yield (b"," if i else b"") + json.dumps(instance_metadata(ref, base_url)).encode()
    yield b"]"


@dataclass
class BulkData:
    media_type: str  # the type parameter of the multipart response
    parts: list[tuple[dict[str, str], list[bytes]]]


def bulkdata(ref: InstanceRef, tag_path: str) -> BulkData:
    """The value of one binary element (PS3.18 10.4.1.1.5): native values as one
    application/octet-stream part (little endian), encapsulated Pixel Data as one part per
    frame in the media type of its transfer syntax. ``tag_path`` is ``7FE00010`` or
    ``00400275/0/00081199`` as in the BulkDataURIs of /metadata."""
    try:
        ds = pydicom.dcmread(ref.path)
    except Exception as exc:  # noqa: BLE001 - stored bytes pydicom cannot read any more
        raise Unframeable(f"the stored instance cannot be parsed: {type(exc).__name__}") from exc
    steps = [s for s in tag_path.strip("/").split("/") if s]
    if not steps or len(steps) % 2 == 0:
        raise NotFound(f"bad bulk data path {tag_path!r}")
    current: Dataset = ds
    try:
        for seq_tag, index in zip(steps[0:-1:2], steps[1:-1:2], strict=True):
            current = current[Tag(int(seq_tag, 16))].value[int(index)]
        tag = Tag(int(steps[-1], 16))
        elem = current[tag]
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise NotFound(f"no element at {tag_path}") from exc
    vr = dicomjson.vr_of(elem.keyword) if " or " in (elem.VR or "") else elem.VR
    if vr not in dicomjson.BINARY_VRS and tag not in dicomjson.PIXEL_TAGS:
        raise NotFound(f"{tag_path} is not a bulk data element")
    tsuid = UID(ref.transfer_syntax_uid)
    if tag == 0x7FE00010 and current is ds and tsuid.is_encapsulated:
        media = FRAME_MEDIA_TYPES.get(str(tsuid), "application/octet-stream")
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            parts = [({"Content-Type": f"{media}; transfer-syntax={tsuid}"}, [frame])
                     for frame in generate_frames(elem.value, number_of_frames=frames)]
        except Exception as exc:  # noqa: BLE001 - pydicom says why in its own words
            raise Unframeable(f"the Pixel Data is not encapsulated as its transfer syntax "
                              f"{tsuid} requires (PS3.5 A.4): {exc}") from exc
        return BulkData(media, parts)
    little = str(tsuid) != "1.2.840.10008.1.2.2"
    value = elem.value if isinstance(elem.value, bytes) else bytes(elem.value or b"")
    data = dicomjson.little_endian_bytes(value, vr, little)
    return BulkData("application/octet-stream",
                    [({"Content-Type": "application/octet-stream"}, [data])])


# -- frames, rendered, thumbnail -------------------------------------------------------------
def frame_parts(ref: InstanceRef, frame_list: str, accept: str | None,
                base_url: str) -> list[tuple[dict[str, str], list[bytes]]]:
    """The frames of ``frame_list`` as multipart parts (PS3.18 10.4.1.1.4), each with its
    Content-Location. All are produced before the response starts, so a frame that cannot be
    cut or decoded is a problem answer, not a broken body. Raises the errors of
    ``app.dicom.frames``."""
    numbers = frames.parse_frame_list(frame_list)
    target = frames.negotiate(accept, ref.transfer_syntax_uid)
    src = frames.open_pixels(ref.path, ref.transfer_syntax_uid)
    frames.check_frames(src, numbers)
    url = instance_url(base_url, ref)
    parts = []
    for n in numbers:
        ctype, data = frames.frame_part(src, n, target)
        parts.append(({"Content-Type": ctype, "Content-Location": f"{url}/frames/{n}"}, [data]))
    return parts


@dataclass(frozen=True)
class RenderRequest:
    media: str = render.JPEG
    window: render.Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int | None = None


def rendered_media_type(accept: str | None) -> str:
    """JPEG unless Accept prefers PNG (PS3.18 8.7.4); NotAcceptable for anything else."""
    for mr in parse_accept(accept):
        if mr.type in ("*/*", "image/*", render.JPEG):
            return render.JPEG
        if mr.type == render.PNG:
            return render.PNG
    raise NotAcceptable(f"rendered images are {render.JPEG} or {render.PNG}; "
                        f"asked for: {accept}")


def parse_render(params: dict[str, str], accept: str | None) -> RenderRequest:
    """Query parameters of rendered resources (PS3.18 8.3.5.1): ``accept`` (which overrides
    the header, 8.3.3.1), ``window``, ``viewport``, ``quality``; others (annotation, charset,
    iccprofile) are ignored. RenderError for a bad value, NotAcceptable for the media type."""
    media = rendered_media_type(params.get("accept") or accept)
    return RenderRequest(
        media,
        render.parse_window(params["window"]) if "window" in params else None,
        render.parse_viewport(params["viewport"]) if "viewport" in params else None,
        render.parse_quality(params["quality"]) if "quality" in params else None)


def rendered(ref: InstanceRef, req: RenderRequest, frame: str = "1",
             thumbnail: bool = False) -> bytes:
    """One frame of an instance as a JPEG or PNG picture (PS3.18 10.4.1.1.3); a thumbnail
    fits in 128x128 (or the viewport) and is never enlarged."""
    numbers = frames.parse_frame_list(frame)
    if len(numbers) != 1:
        raise frames.FrameListError("a rendered frame is one frame number, not a list")
    src = frames.open_pixels(ref.path, ref.transfer_syntax_uid)
    frames.check_frames(src, numbers)
    arr = frames.decoded_frame(src, numbers[0])
    viewport = req.viewport or (render.THUMBNAIL_SIZE if thumbnail else None)
    return render.render(arr, src.ds, numbers[0] - 1, window=req.window, viewport=viewport,
                         media=req.media, quality=req.quality, upscale=not thumbnail)


def middle_instance(refs: list[InstanceRef]) -> InstanceRef:
    """The instance a series is shown by: the middle one by InstanceNumber, then SOP UID."""
    ordered = sorted(refs, key=lambda r: (r.instance_number is None, r.instance_number or 0,
                                          r.sop_instance_uid))
    return ordered[len(ordered) // 2]


def representatives(refs: list[InstanceRef]) -> list[InstanceRef]:
    """The middle instance of each series, in series order: a study's thumbnail is the first
    of these that has pixel data."""
    by_series: dict[str, list[InstanceRef]] = {}
    for r in refs:
        by_series.setdefault(r.series_uid, []).append(r)
    return [middle_instance(group) for group in by_series.values()]


def thumbnail(refs: list[InstanceRef], req: RenderRequest) -> tuple[InstanceRef, bytes]:
    """The thumbnail of a series or study: its first representative instance with pixels."""
    for ref in representatives(refs):
        try:
            return ref, rendered(ref, req, thumbnail=True)
        except frames.FrameNotFound:
            continue  # an SR or another instance without pixels: try the next series
    raise frames.FrameNotFound("no instance here has pixel data to show")


# -- QIDO-RS ---------------------------------------------------------------------------------
@dataclass
class SearchRequest:
    query: Query
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = MAX_RESULTS
    warnings: list[str] = field(default_factory=list)
    # True when MedGate's maximum, not the client's limit, bounds the answer (PS3.18 8.3.4.4)
    capped_by_server: bool = True


def parse_search(level: str, params: list[tuple[str, str]], study_uid: str | None = None,
                 series_uid: str | None = None) -> SearchRequest:
    """Query parameters (PS3.18 8.3.4): matching keys by keyword or tag, repeated or comma
    separated UID lists, includefield, limit, offset, fuzzymatching. QueryError if invalid."""
    filters: dict[str, list[str]] = {}
    include: set[str] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    warnings: list[str] = []
    for name, value in params:
        lname = name.lower()
        if lname == "includefield":
            for field_name in (v.strip() for v in value.split(",") if v.strip()):
                if field_name.lower() == "all":
                    include_all = True
                else:
                    include.add(keyword(field_name))
        elif lname in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError as exc:
                raise QueryError(f"{lname} must be a whole number, not {value!r}") from exc
            if number < 0:
                raise QueryError(f"{lname} must not be negative")
            if lname == "limit":
                limit = number
            else:
                offset = number
        elif lname == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise QueryError("fuzzymatching must be true or false")
            if value.strip().lower() == "true":
                warnings.append('299 MedGate "fuzzymatching is not supported; '
                                'person names were matched as given"')
        elif not value.strip():
            include.add(keyword(name))  # an empty matching key asks for the attribute
        else:
            filters.setdefault(keyword(name), []).append(value)
    effective = MAX_RESULTS if limit is None else min(limit, MAX_RESULTS)
    flat = {k: ",".join(v) for k, v in filters.items()}
    query = Query(level, flat, study_uid=study_uid, series_uid=series_uid,
                  limit=effective + 1, offset=offset)
    return SearchRequest(query, include, include_all, effective, warnings,
                         capped_by_server=limit is None or limit > MAX_RESULTS)


def _return_keys(req: SearchRequest) -> list[str]:
    """PS3.18 10.6.3.3: the level's attributes, plus those of the levels above that the
    request path did not fix, plus the matching keys and includefield attributes."""
    q = req.query
    keys = list(DEFAULT_RETURN[q.level])
    if q.level in ("SERIES", "INSTANCE") and not q.study_uid:
        keys = DEFAULT_RETURN["STUDY"] + keys
    if q.level == "INSTANCE" and not q.series_uid:
        keys = DEFAULT_RETURN["SERIES"] + keys
    keys += list(q.filters) + sorted(req.include)
    return list(dict.fromkeys(keys))


def _representative_paths(session: Session, level: str,
                          rows: list[dict[str, Any]]) -> dict[str, Path]:
    """The file whose header answers for each study (STUDY level) or series (SERIES level) of
    ``rows``: its first stored instance. One statement for all rows, not one per row."""
    if level == "STUDY":
        key, column = "StudyInstanceUID", Study.study_uid
    else:
        key, column = "SeriesInstanceUID", Series.series_uid
    firsts = (select(func.min(Instance.id)).join(Series, Instance.series_fk == Series.id)
              .join(Study, Series.study_fk == Study.id)
              .where(column.in_(sorted({row[key] for row in rows}))).group_by(column))
    stmt = (select(column, Instance.path).join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id).where(Instance.id.in_(firsts)))
    root = get_settings().store_dir
    return {uid: root / path for uid, path in session.execute(stmt)}


def _header_fields(path: Path | None, wanted: list[str],
                   everything: bool) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a stored file always parses; never fail a search on it
        return {}
    if everything:
        return dicomjson.dataset_json(ds)
    tags = {int(Tag(kw)) for kw in wanted}
    found = dicomjson.dataset_json(ds, tags=tags)
    for kw in wanted:  # asked for and absent: sent empty, so the client sees it was looked up
        found.setdefault(f"{int(Tag(kw)):08X}", {"vr": dicomjson.vr_of(kw)})
    return found


def _result_url(base_url: str, level: str, row: dict[str, Any]) -> str:
    url = f"{base_url}/studies/{row['StudyInstanceUID']}"
    if level in ("SERIES", "INSTANCE"):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "INSTANCE":
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def run_search(session: Session, req: SearchRequest,
               base_url: str) -> tuple[list[dict[str, Any]], bool]:
    """The matches as DICOM JSON objects, and whether MedGate's maximum left matches out (the
    caller then adds the Warning of PS3.18 8.3.4.4)."""
    rows = search(session, req.query)
    more = len(rows) > req.limit and req.capped_by_server
    rows = rows[:req.limit]
    keys = _return_keys(req)
    level = req.query.level
    # Rows of one level carry the same keys, so either every row needs header fields or none.
    paths: dict[str, Path] = {}
    if rows and level != "INSTANCE" and any(k not in rows[0] and k != "RetrieveURL"
                                            for k in keys):
        paths = _representative_paths(session, level, rows)
    root = get_settings().store_dir
    out = []
    for row in rows:
        attrs = {k: row[k] for k in keys if k in row}
        if req.include_all:
            attrs.update({k: v for k, v in row.items() if not k.startswith("_")})
        attrs["RetrieveURL"] = _result_url(base_url, level, row)
        result = dicomjson.attributes_json(attrs)
        missing = [k for k in keys if k not in row and k != "RetrieveURL"]
        if missing or (req.include_all and level == "INSTANCE"):
            if level == "INSTANCE":
                path = root / row["_path"] if row.get("_path") else None
            else:
                path = paths.get(row["StudyInstanceUID" if level == "STUDY"
                                     else "SeriesInstanceUID"])
            extra = _header_fields(path, missing, req.include_all and level == "INSTANCE")
            for tag, element in extra.items():
                result.setdefault(tag, element)
            result = dict(sorted(result.items()))
        out.append(result)
    return out, more


__all__ = ["BulkData", "InstanceRef", "NotAcceptable", "NotFound", "RenderRequest",
           "SearchRequest", "Unframeable", "bulkdata", "check_accept_dicom",
           "check_accept_json", "find_instances", "frame_parts", "metadata_json",
           "middle_instance", "multipart_instances", "parse_render", "parse_search",
           "rendered", "rendered_media_type", "representatives", "run_search", "thumbnail"]
