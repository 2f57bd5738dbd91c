"""DICOM JSON Model (PS3.18 Annex F.2): datasets and index rows to ``application/dicom+json``.

Encoding rules followed here (PS3.18 F.2.2 - F.2.7):

- keys are the eight upper-case hex digits of the tag; each value is ``{"vr": ..., "Value": [...]}``
  or, for binary VRs, ``InlineBinary`` (base64) or ``BulkDataURI``; an empty element has no
  ``Value``; empty items of a multi-valued element are ``null``;
- PN values are objects with ``Alphabetic`` / ``Ideographic`` / ``Phonetic`` groups (F.2.2);
- IS and DS are JSON numbers (F.2.3; an invalid number is sent as null); AT is the tag as
  hex text;
- SQ items are nested DICOM JSON objects;
- group lengths and the File Meta Information (group 0002) are not part of a dataset's JSON.
  DICOM JSON is always UTF-8, so a Specific Character Set present in the file is answered as
  ``ISO_IR 192``.

Bulk data (MedGate's choice, see docs/dicomweb.md): in WADO-RS ``/metadata`` a binary value
longer than :data:`BULK_THRESHOLD` bytes (Pixel Data always, however small) is not sent; its
element carries a ``BulkDataURI`` that the ``/bulkdata`` resource answers. Shorter binary values
are ``InlineBinary``. Where no URI maker is given (QIDO ``includefield``), bulk values are left
out and only the VR is sent. Values still on disk (read with ``defer_size``) are never loaded to
decide this: their length is known from the header.
"""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

BULK_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_WORD = {"OW": "H", "OF": "f", "OL": "I", "OD": "d", "OV": "Q"}

# Called with the element's tag path ("7FE00010", "00400275/0/00081199"); returns a URI.
BulkURI = Callable[[str], str]


def _vr(vr: str | None, tag: BaseTag) -> str:
    """Resolve a missing (implicit VR) or ambiguous VR to one the JSON model can carry."""
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    if " or " in vr:
        options = vr.split(" or ")
        return "OW" if "OW" in options else options[0]
    return vr


def _number(value: Any, vr: str) -> int | float | None:
    """A number for JSON; a value that is not a valid finite number (an IS of "1A") becomes
    null, as the JSON model has no way to carry it and clients parse numbers strictly."""
    if value is None or value == "":
        return None
    try:
        num = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(num):
        return None
    if vr == "IS" or (vr in ("SL", "SS", "UL", "US", "SV", "UV")):
        return int(num)
    return num


def _person_name(value: Any) -> dict[str, str] | None:
    text = str(value) if value is not None else ""
    if not text:
        return None
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("="), strict=False))
    return {k: v for k, v in groups.items() if v} or None


def _scalar(value: Any, vr: str) -> Any:
    if value is None:
        return None
    if vr in ("IS", "DS") or vr in NUMBER_VRS:
        return _number(value, vr)
    if vr == "PN":
        return _person_name(value)
    if vr == "AT":
        return f"{int(Tag(value)):08X}"
    text = str(value)
    return text if text != "" else None


def _values(value: Any, vr: str) -> list[Any]:
    if value is None or (isinstance(value, str | bytes) and value in ("", b"")):
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [_scalar(v, vr) for v in items]


def little_endian_bytes(data: bytes, vr: str, little_endian: bool) -> bytes:
    """Binary values in DICOM JSON are little endian (PS3.18 F.2.7)."""
    code = _WORD.get(vr)
    if little_endian or not code:
        return data
    arr = array(code)
    usable = len(data) - len(data) % arr.itemsize
    arr.frombytes(data[:usable])
    arr.byteswap()
    return arr.tobytes() + data[usable:]


def element_json(elem: DataElement | RawDataElement, path: str,
                 bulk_uri: BulkURI | None = None, threshold: int = BULK_THRESHOLD,
                 little_endian: bool = True, ds: Dataset | None = None) -> dict[str, Any]:
    """One element as a DICOM JSON object.

    A raw element is converted through ``ds`` (pydicom's VR and character set rules), except a
    deferred binary value, which stays on disk: its length decides inline or bulk."""
    tag = BaseTag(elem.tag)
    deferred = isinstance(elem, RawDataElement) and elem.value is None and bool(elem.length)
    if deferred:
        guess = _vr(elem.VR if elem.VR != "UN" else None, tag)
        if guess not in BINARY_VRS and tag not in PIXEL_TAGS:
            deferred = False  # a long text value: read it
    if isinstance(elem, RawDataElement) and not deferred:
        if ds is None:
            raise ValueError("a raw element needs its dataset to be converted")
        elem = ds[tag]
    vr = _vr(elem.VR, tag)
    out: dict[str, Any] = {"vr": vr}
    if vr in BINARY_VRS or tag in PIXEL_TAGS:
        length = elem.length if deferred else len(elem.value or b"")
        if length == 0:
            return out
        if tag in PIXEL_TAGS or length > threshold or deferred:
            if bulk_uri is not None:
                out["BulkDataURI"] = bulk_uri(path)
            return out
        value = elem.value
        data = little_endian_bytes(value if isinstance(value, bytes) else bytes(value), vr,
                                   little_endian)
        out["InlineBinary"] = base64.b64encode(data).decode()
        return out
    if vr == "SQ":
        items = [dataset_json(item, bulk_uri, threshold, f"{path}/{i}/", little_endian)
                 for i, item in enumerate(elem.value or [])]
        if items:
            out["Value"] = items
        return out
    if elem.is_empty:
        return out
    if tag == 0x00080005:
        out["Value"] = ["ISO_IR 192"]
        return out
    values = _values(elem.value, vr)
    if any(v is not None for v in values):
        out["Value"] = values
    return out


def dataset_json(ds: Dataset, bulk_uri: BulkURI | None = None,
                 threshold: int = BULK_THRESHOLD, prefix: str = "",
                 little_endian: bool | None = None,
                 tags: set[int] | None = None) -> dict[str, Any]:
    """A dataset (not its File Meta Information) as a DICOM JSON object.

    ``tags`` restricts the output to those top-level tags; ``prefix`` is the tag path of a
    nested dataset, for bulk data URIs."""
    if little_endian is None:
        meta = getattr(ds, "file_meta", None)
        tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
        little_endian = not (tsuid is not None and str(tsuid) == "1.2.840.10008.1.2.2")
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag.group in (0x0002, 0xFFFE):
            continue
        if tags is not None and int(tag) not in tags:
            continue
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is None:
            continue
        key = f"{int(tag):08X}"
        try:
            out[key] = element_json(raw, prefix + key, bulk_uri, threshold, little_endian, ds)
        except Exception:  # noqa: BLE001 - a value pydicom cannot decode: send the VR only
            out[key] = {"vr": _vr(getattr(raw, "VR", None), tag)}
    return out


@lru_cache(maxsize=4096)
def vr_of(kw: str) -> str:
    tag = tag_for_keyword(kw)
    return _vr(dictionary_VR(tag) if tag is not None else None, BaseTag(tag or 0))


@lru_cache(maxsize=4096)
def _json_key(kw: str) -> str | None:
    """The 8-hex-digit key of a keyword's tag (None for an unknown or a private ``_`` one)."""
    tag = tag_for_keyword(kw) if not kw.startswith("_") else None
    return None if tag is None else f"{tag:08X}"


def attributes_json(attrs: dict[str, Any]) -> dict[str, Any]:
    """Index attributes (keyword -> plain value, as ``app.dicom.query`` returns them) as DICOM
    JSON; keywords starting with ``_`` are private to MedGate and left out."""
    out: dict[str, Any] = {}
    for kw, value in attrs.items():
        key = _json_key(kw)
        if key is None:
            continue
        vr = vr_of(kw)
        element: dict[str, Any] = {"vr": vr}
        values = _values(value, vr)
        if any(v is not None for v in values):
            element["Value"] = values
        out[key] = element
    return dict(sorted(out.items()))


__all__ = ["BULK_THRESHOLD", "attributes_json", "dataset_json", "element_json",
           "little_endian_bytes", "vr_of"]
