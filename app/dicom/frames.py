"""Frames of a stored instance's Pixel Data: WADO-RS frame retrieval (PS3.18 10.4.1.1.4,
media types and transfer syntaxes of PS3.18 8.7.3.5) and decoded frames for rendering.

The stored file is read once; native frames are cut from Pixel Data by byte offset (the whole
array is never decoded to send one frame), encapsulated ones are taken with ``pydicom.encaps``
(Extended or Basic Offset Table, else by counting fragments). The only transcoding is to native
little endian, with the pydicom decoders that are installed; a syntax without one is
:class:`CannotDecode`. This module knows nothing of HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from app.dicom.multipart import parse_accept, parse_media_type

OCTET_STREAM = "application/octet-stream"
# Syntaxes whose Pixel Data bytes are already native little endian.
NATIVE_LE = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian),
             str(DeflatedExplicitVRLittleEndian)}
# PS3.18 Table 8.7.3-5: media types of compressed frames, by transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# Older PS3.18 editions (and some clients) name RLE frames image/x-dicom-rle.
MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle"}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
MAX_FRAMES_PER_REQUEST = 10_000


class FrameListError(ValueError):
    """A frame list that is not comma separated positive integers (400)."""


class FrameNotFound(LookupError):
    """A frame number past the instance's last frame, or an instance without pixels (404)."""


class CannotDecode(Exception):
    """The frames cannot be produced in the syntax asked for: no installed decoder (406)."""


class NotAcceptableFrames(Exception):
    """No media range of the Accept header is one MedGate can send these frames as (406)."""


class Unframeable(Exception):
    """A stored file whose pixel data cannot be cut into frames as its header says (for
    instance one stored before the store checked pixel data against the transfer syntax);
    the whole instance can still be retrieved (422, never 500)."""


def parse_frame_list(text: str) -> list[int]:
    """PS3.18 10.4.1.1.4: ``1`` or ``1,3,5``; frame numbers start at 1, in the order asked."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not re.fullmatch(r"\d{1,9}", t) for t in items):
        raise FrameListError(f"the frame list must be comma separated frame numbers "
                             f"(1, 2, ...), not {text!r}")
    numbers = [int(t) for t in items]
    if 0 in numbers:
        raise FrameListError("frame numbers start at 1; 0 is not a frame")
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise FrameListError(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    return numbers


@dataclass
class PixelSource:
    """The dataset of one stored file and the geometry of its frames."""

    ds: Dataset
    transfer_syntax: UID
    keyword: str  # PixelData, FloatPixelData or DoubleFloatPixelData
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    number_of_frames: int

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated


def open_pixels(path: Path, transfer_syntax: str) -> PixelSource:
    """One read of the stored file; FrameNotFound when it has no pixel data."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - stored bytes pydicom cannot read any more
        raise Unframeable(f"the stored instance cannot be parsed: {type(exc).__name__}") from exc
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise FrameNotFound("the instance has no pixel data, so no frames")
    meta = getattr(ds, "file_meta", None)
    tsuid = UID(str((meta.get("TransferSyntaxUID") if meta is not None else None)
                    or transfer_syntax))
    try:
        src = PixelSource(ds, tsuid, keyword, int(ds.Rows), int(ds.Columns),
                          int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated),
                          int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise Unframeable(f"the Image Pixel module cannot be read: {exc}") from exc
    if min(src.rows, src.columns, src.samples, src.bits_allocated, src.number_of_frames) < 1:
        raise Unframeable("Rows, Columns, Samples per Pixel, Bits Allocated and Number of "
                          "Frames must be positive")
    return src


def check_frames(src: PixelSource, numbers: list[int]) -> None:
    beyond = sorted({n for n in numbers if n > src.number_of_frames})
    if beyond:
        raise FrameNotFound(f"frame {', '.join(map(str, beyond))} does not exist: the "
                            f"instance has {src.number_of_frames} frame(s)")


def stored_frame(src: PixelSource, number: int) -> bytes:
    """Frame ``number`` (from 1) as stored: the compressed bytes of an encapsulated syntax,
    native little endian pixels otherwise (big endian is swapped, as nobody reads it)."""
    index = number - 1
    value = src.ds[src.keyword].value
    if src.transfer_syntax.is_encapsulated:
        ds = src.ds
        eot = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        try:
            return get_frame(value, index, number_of_frames=src.number_of_frames,
                             extended_offsets=eot)
        except Exception as exc:  # noqa: BLE001 - pydicom says why in its own words
            raise Unframeable(f"the Pixel Data is not encapsulated as its transfer syntax "
                              f"{src.transfer_syntax} requires (PS3.5 A.4): {exc}") from exc
    if str(src.transfer_syntax) not in NATIVE_LE:
        return native_bytes(decoded_frame(src, number), src.bits_allocated)
    bits = src.frame_bits
    start = index * bits
    if len(value) * 8 < start + bits:
        raise Unframeable(f"the Pixel Data holds {len(value)} bytes, too few for frame "
                          f"{number} of {src.rows}x{src.columns}x{src.samples} pixels at "
                          f"{src.bits_allocated} bits")
    if bits % 8 == 0:
        return bytes(value[start // 8:(start + bits) // 8])
    # BitsAllocated 1 (PS3.5 8.1.1): frames are packed end to end, so one may start inside a
    # byte; repack it from bit 0, least significant bit first, as pydicom's pack_bits does.
    chunk = np.frombuffer(value[start // 8:-(-(start + bits) // 8)], dtype=np.uint8)
    pixels = np.unpackbits(chunk, bitorder="little")[start % 8:start % 8 + bits]
    return np.packbits(pixels, bitorder="little").tobytes()


def can_decode(tsuid: str) -> str | None:
    """None when pydicom can decode this syntax here; else why not."""
    uid = UID(tsuid)
    if not uid.is_encapsulated and str(uid) != str(ExplicitVRBigEndian):
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"pydicom has no decoder for {uid.name} ({uid})"
    if decoder.is_available:
        return None
    missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
    return f"no decoder for {uid.name} ({uid}) is installed here (needs {missing})"


def decoded_frame(src: PixelSource, number: int) -> np.ndarray:
    """Frame ``number`` (from 1) decoded by pydicom: as ``ds.pixel_array[number - 1]``
    (colour as RGB, BitsAllocated 1 unpacked to one byte a pixel)."""
    why = can_decode(str(src.transfer_syntax))
    if why:
        raise CannotDecode(why)
    try:
        return pixel_array(src.ds, index=number - 1)
    except Exception as exc:  # noqa: BLE001 - a codec's own error: the stored bytes are bad
        raise Unframeable(f"frame {number} cannot be decoded from "
                          f"{src.transfer_syntax.name}: {exc}") from exc


def native_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    """A decoded frame as native little endian Pixel Data bytes (PS3.5 8.1.1)."""
    if bits_allocated == 1:
        return pack_bits(arr)
    if arr.dtype.kind in "ui" and arr.dtype.itemsize * 8 != bits_allocated:
        arr = arr.astype(f"{arr.dtype.kind}{bits_allocated // 8}")
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


# -- negotiation (PS3.18 8.7.3.5) ------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """How frames go out: as stored, or decoded to native pixels labelled ``syntax``."""

    as_stored: bool
    syntax: str = str(ExplicitVRLittleEndian)


AS_STORED = Target(True)


def negotiate(accept: str | None, stored: str) -> Target:
    """The first media range of Accept that MedGate can produce for frames stored in
    ``stored``: ``transfer-syntax=*`` (or a wildcard) gives them as stored;
    ``application/octet-stream`` without transfer-syntax, or with Explicit or Implicit VR
    Little Endian, gives native pixels (decoding compressed frames); the media type of the
    stored syntax (image/jpeg, ...) gives them as stored. NotAcceptableFrames otherwise."""
    reasons: list[str] = []
    for mr in parse_accept(accept):
        if mr.type in ("*/*", "multipart/*"):
            return AS_STORED
        if mr.type != "multipart/related":
            reasons.append(f"{mr.type} (frames are sent as multipart/related)")
            continue
        inner = parse_media_type(mr.params.get("type", "*/*"))
        kind = MEDIA_ALIASES.get(inner.type, inner.type)
        ts = mr.params.get("transfer-syntax") or inner.params.get("transfer-syntax")
        if kind == "*/*" or (ts == "*" and kind in (OCTET_STREAM, "application/*")):
            return AS_STORED
        if kind == OCTET_STREAM:
            wanted = ts or str(ExplicitVRLittleEndian)  # PS3.18 Table 8.7.3-5 default
            if wanted not in (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)):
                reasons.append(f"{OCTET_STREAM} in {wanted}: MedGate transcodes only to "
                               f"native little endian")
                continue
            if stored in NATIVE_LE:
                return Target(True, wanted)  # the same bytes, whichever native LE is named
            why = can_decode(stored)
            if why:
                reasons.append(f"{OCTET_STREAM} in {wanted}: {why}")
                continue
            return Target(False, wanted)
        media = FRAME_MEDIA_TYPES.get(stored)
        if media is not None and kind == media and ts in (None, "*", stored):
            return AS_STORED
        reasons.append(f"{inner.type}" + (f" in {ts}" if ts else ""))
    stored_as = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM)
    raise NotAcceptableFrames(
        f"the frames are stored as {UID(stored).name} ({stored}); MedGate sends them as "
        f"stored (multipart/related; type=\"{stored_as}\"; transfer-syntax=*) or as native "
        f"Explicit VR Little Endian (multipart/related; type=\"{OCTET_STREAM}\"); "
        f"cannot send: {'; '.join(reasons) or accept}")


def frame_part(src: PixelSource, number: int, target: Target) -> tuple[str, bytes]:
    """The Content-Type and content of one frame's part."""
    stored = str(src.transfer_syntax)
    if target.as_stored and src.transfer_syntax.is_encapsulated:
        media = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM)
        return f"{media}; transfer-syntax={stored}", stored_frame(src, number)
    if target.as_stored:  # native: little endian bytes whichever native syntax is stored
        return f"{OCTET_STREAM}; transfer-syntax={target.syntax}", stored_frame(src, number)
    data = native_bytes(decoded_frame(src, number), src.bits_allocated)
    return f"{OCTET_STREAM}; transfer-syntax={target.syntax}", data


__all__ = ["AS_STORED", "CannotDecode", "FRAME_MEDIA_TYPES", "FrameListError", "FrameNotFound",
           "NotAcceptableFrames", "PixelSource", "Target", "Unframeable", "can_decode",
           "check_frames", "decoded_frame", "frame_part", "native_bytes", "negotiate",
           "open_pixels", "parse_frame_list", "stored_frame"]
