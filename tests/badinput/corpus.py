"""The bad-input corpus (issue 10): files and request bodies as broken senders and attackers make
them, each with the specific answer MedGate owes it.

``FILE_CASES`` are Part 10 files. Over STOW-RS each is one part of a request; over C-STORE the
bytes after the file meta are sent as the data set, on the context the meta names (only cases
with ``cstore`` set: C-STORE carries no preamble or meta, so broken ones cannot be sent).
``BODY_CASES`` are whole STOW-RS requests (headers and body) broken as multipart messages.

Every case is built from scratch here: nothing depends on a file that could change.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
ROOT = "1.2.826.0.1.3680043.10.1234"  # a test root; every UID below is ROOT + a counter
ROWS = COLS = 16

# store.py status names
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700

# What a bomb inflates to and the limit the tests set (MEDGATE_MAX_INFLATED_BYTES).
BOMB_INFLATED = 24 * 1024**2
BOMB_LIMIT = 4 * 1024**2

_counter = iter(range(1, 1_000_000))


def uid() -> str:
    return f"{ROOT}.{next(_counter)}"


@dataclass(frozen=True)
class FileCase:
    name: str
    build: Callable[[], bytes]
    # FailureReason the STOW-RS response gives the part
    stow: int
    # C-STORE response status; None when the case cannot be sent as a C-STORE data set
    cstore: int | None = None


@dataclass(frozen=True)
class BodyCase:
    name: str
    content_type: str
    build: Callable[[], bytes]
    # HTTP status of the whole request; a part-level refusal gives FailureReason ``part``
    status: int
    part: int | None = None
    env: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ building blocks

def image(*, sop_class: str = CT_IMAGE, bits: int = 16, **attrs: object) -> Dataset:
    """A small valid CT-like image; ``attrs`` set (or with None remove) attributes."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid()
    ds.StudyInstanceUID = uid()
    ds.SeriesInstanceUID = uid()
    ds.PatientName = "Corpus^Case"
    ds.PatientID = "CORPUS-1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * (ROWS * COLS * bits // 8 // 256)
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if "PixelData" in ds:  # OB or OW follows Bits Allocated, which a case may have removed
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    return ds


def part10(ds: Dataset, tsuid: str = ExplicitVRLittleEndian, *,
           meta: dict[str, object] | None = None, preamble: bytes = b"\0" * 128,
           prefix: bytes = b"DICM") -> bytes:
    """The Part 10 bytes of ``ds`` written as is (no checks, so broken data sets can be made).
    The meta names the data set's UIDs unless ``meta`` overrides (None removes)."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.get("SOPClassUID", SECONDARY_CAPTURE)
    fm.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", uid())
    fm.TransferSyntaxUID = tsuid
    fm.ImplementationClassUID = f"{ROOT}.0"
    for key, value in (meta or {}).items():
        if value is None:
            delattr(fm, key)
        else:
            setattr(fm, key, value)
    fp = DicomBytesIO()
    fp.write(preamble + prefix)
    try:  # with the group length and version a standard meta has
        write_file_meta_info(fp, fm, enforce_standard=True)
    except (AttributeError, ValueError):  # a meta broken on purpose
        fp = DicomBytesIO()
        fp.write(preamble + prefix)
        write_file_meta_info(fp, fm, enforce_standard=False)
    body = DicomBytesIO()
    ts = pydicom.uid.UID(tsuid)
    implicit = ts.is_implicit_VR if ts.is_transfer_syntax else False
    little = ts.is_little_endian if ts.is_transfer_syntax else True
    body.is_little_endian, body.is_implicit_VR = little, implicit
    write_dataset(body, ds)
    data = body.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return fp.getvalue() + data


def encapsulated(ds: Dataset, frames: int = 1) -> Dataset:
    """``ds`` with its pixels as encapsulated fragments (the bytes are not decoded by MedGate:
    a compressed transfer syntax only needs the PS3.5 A.4 structure)."""
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(60) + b"\xff\xd9"] * frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def pixel_offset(data: bytes) -> int:
    """Where the (7FE0,0010) element starts in explicit VR little endian bytes."""
    return data.rindex(b"\xe0\x7f\x10\x00")


def meta_end(data: bytes) -> int:
    """The offset of the first data set byte (after the file meta group)."""
    (group_len,) = struct.unpack("<I", data[140:144])
    return 144 + group_len


def deflate_bomb(inflated: int = BOMB_INFLATED) -> bytes:
    """A deflated data set of ``inflated`` bytes of zeros in one OB element (a few KB)."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    fm.MediaStorageSOPInstanceUID = uid()
    fm.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, fm, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    buf.write(deflater.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated)))
    block = bytes(1 << 20)
    for _ in range(inflated >> 20):
        buf.write(deflater.compress(block))
    buf.write(deflater.flush())
    return buf.getvalue()


def _valid() -> bytes:
    return part10(image())


def _cut(at: Callable[[bytes], int]) -> Callable[[], bytes]:
    def build() -> bytes:
        data = _valid()
        return data[:at(data)]
    return build


def _with(**attrs: object) -> Callable[[], bytes]:
    return lambda: part10(image(**attrs))


def _meta(**meta: object) -> Callable[[], bytes]:
    return lambda: part10(image(), meta=meta)


def _ts(tsuid: str, ds_factory: Callable[[], Dataset] = image) -> Callable[[], bytes]:
    return lambda: part10(ds_factory(), tsuid)


def _encapsulated_native_ts() -> bytes:
    return part10(encapsulated(image(bits=8)), ExplicitVRLittleEndian)


def _encapsulated_cut_in_fragment() -> bytes:
    data = part10(encapsulated(image(bits=8)), JPEGBaseline8Bit)
    return data[:-30]


def _encapsulated_no_delimiter() -> bytes:
    data = part10(encapsulated(image(bits=8)), JPEGBaseline8Bit)
    return data[:-8]  # the sequence delimitation item (FFFE,E0DD) and its length


def _deflate_garbage() -> bytes:
    head = part10(image(), DeflatedExplicitVRLittleEndian)
    return head[:meta_end(head)] + b"\x93\x17this is not a deflate stream" * 20


def _deflate_cut() -> bytes:
    data = part10(image(), DeflatedExplicitVRLittleEndian)
    return data[:meta_end(data) + 40]


def _meta_group_length_too_big() -> bytes:
    data = bytearray(_valid())
    data[140:144] = struct.pack("<I", 100_000)
    return bytes(data)


def _meta_group_length_too_small() -> bytes:
    data = bytearray(_valid())
    data[140:144] = struct.pack("<I", 10)
    return bytes(data)


def _garbage_after_prefix() -> bytes:
    return b"\0" * 128 + b"DICM" + bytes(range(256)) * 4


def _frames_not_a_number() -> bytes:
    ds = image()
    # a raw element: pydicom refuses to make an IS of "1A", a broken sender does not
    ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 2, b"1A", 0, False, True)
    return part10(ds)


def _pixels(length: int, **attrs: object) -> Callable[[], bytes]:
    return lambda: part10(image(PixelData=bytes(length), **attrs))


def _float_pixels_short() -> bytes:
    ds = image(sop_class=PARAMETRIC_MAP, PixelData=None, BitsAllocated=32, BitsStored=None,
               HighBit=None, PixelRepresentation=None)
    ds.FloatPixelData = bytes(ROWS * COLS * 4 // 2)
    return part10(ds)


def _sequence(**item_attrs: object) -> Dataset:
    ds = image()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    for key, value in item_attrs.items():
        setattr(item, key, value)
    ds.AnatomicRegionSequence = [item]
    return ds


def _item_longer_than_file() -> bytes:
    """A defined-length sequence whose item claims more bytes than the file has."""
    ds = _sequence()
    data = bytearray(part10(ds))
    at = data.index(b"\xfe\xff\x00\xe0")  # the item tag; its 4-byte length follows
    data[at + 4:at + 8] = struct.pack("<I", 10_000_000)
    return bytes(data)


def _sequence_never_closed() -> bytes:
    ds = _sequence()
    ds["AnatomicRegionSequence"].is_undefined_length = True
    data = part10(ds)
    end = data.index(b"\xfe\xff\xdd\xe0")  # the sequence delimitation item
    return data[:end]


FILE_CASES: list[FileCase] = [
    # -- truncations -------------------------------------------------------------------------
    FileCase("empty file", lambda: b"", CANNOT_UNDERSTAND),
    FileCase("cut inside the preamble", _cut(lambda d: 64), CANNOT_UNDERSTAND),
    FileCase("cut after DICM", _cut(lambda d: 132), CANNOT_UNDERSTAND),
    FileCase("cut inside the file meta", _cut(lambda d: 170), CANNOT_UNDERSTAND),
    FileCase("cut after the file meta (empty data set)", _cut(meta_end), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    # not over C-STORE: pynetdicom's sender finds no data set after the meta and sends none
    FileCase("cut inside the first element header", _cut(lambda d: meta_end(d) + 5),
             CANNOT_UNDERSTAND),
    FileCase("cut inside the first element value", _cut(lambda d: meta_end(d) + 20),
             CANNOT_UNDERSTAND, CANNOT_UNDERSTAND),
    FileCase("cut in the middle of the data set", _cut(lambda d: (meta_end(d) + pixel_offset(d))
                                                       // 2), CANNOT_UNDERSTAND,
             CANNOT_UNDERSTAND),
    FileCase("cut just before Pixel Data", _cut(pixel_offset), DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("cut inside the Pixel Data header", _cut(lambda d: pixel_offset(d) + 6),
             CANNOT_UNDERSTAND, CANNOT_UNDERSTAND),
    FileCase("cut half way through Pixel Data", _cut(lambda d: len(d) - ROWS * COLS),
             CANNOT_UNDERSTAND, CANNOT_UNDERSTAND),
    FileCase("cut one byte short", _cut(lambda d: len(d) - 1), CANNOT_UNDERSTAND,
             CANNOT_UNDERSTAND),
    FileCase("a sequence item longer than the file", _item_longer_than_file, CANNOT_UNDERSTAND,
             CANNOT_UNDERSTAND),
    FileCase("an undefined-length sequence never closed", _sequence_never_closed,
             CANNOT_UNDERSTAND, CANNOT_UNDERSTAND),
    FileCase("encapsulated, cut inside a fragment", _encapsulated_cut_in_fragment,
             CANNOT_UNDERSTAND, CANNOT_UNDERSTAND),
    FileCase("encapsulated, no sequence delimiter", _encapsulated_no_delimiter,
             CANNOT_UNDERSTAND, CANNOT_UNDERSTAND),
    # -- preambles and file meta ---------------------------------------------------------------
    FileCase("no preamble", lambda: _valid()[128:], CANNOT_UNDERSTAND),
    FileCase("DICX instead of DICM", lambda: part10(image(), prefix=b"DICX"), CANNOT_UNDERSTAND),
    FileCase("a bare data set, no Part 10 header", lambda: _valid()[meta_end(_valid()):],
             CANNOT_UNDERSTAND),
    FileCase("garbage after DICM", _garbage_after_prefix, CANNOT_UNDERSTAND),
    FileCase("meta without Transfer Syntax UID", _meta(TransferSyntaxUID=None),
             CANNOT_UNDERSTAND),
    FileCase("meta group length too big", _meta_group_length_too_big, CANNOT_UNDERSTAND),
    FileCase("meta group length too small", _meta_group_length_too_small, CANNOT_UNDERSTAND),
    FileCase("unknown transfer syntax", _meta(TransferSyntaxUID="1.2.3.4.5.6"),
             CANNOT_UNDERSTAND),
    FileCase("transfer syntax not a UID", _meta(TransferSyntaxUID="explicit"),
             CANNOT_UNDERSTAND),
    # -- missing and overlong UIDs -------------------------------------------------------------
    FileCase("no SOP Class UID (the meta has one)", _with(SOPClassUID=None), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("no SOP Instance UID (the meta has one)", _with(SOPInstanceUID=None),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("no Study Instance UID", _with(StudyInstanceUID=None), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("no Series Instance UID", _with(SeriesInstanceUID=None), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("empty SOP Instance UID", _with(SOPInstanceUID=""), DOES_NOT_MATCH),
    FileCase("empty Study Instance UID", _with(StudyInstanceUID=""), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    # the meta names a valid UID: a C-STORE request cannot carry one over 64 characters
    FileCase("SOP Instance UID of 65 characters",
             lambda: part10(image(SOPInstanceUID="1." + "2" * 63),
                            meta={"MediaStorageSOPInstanceUID": uid()}),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("Study Instance UID of 65 characters", _with(StudyInstanceUID="1." + "3" * 63),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("Series Instance UID of 100 characters", _with(SeriesInstanceUID="1." + "4" * 98),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("SOP Class UID of 65 characters", _with(SOPClassUID="1." + "5" * 63),
             DOES_NOT_MATCH),
    FileCase("letters in the SOP Class UID", _with(SOPClassUID="1.2.840.10008.5.1.4.1.1.x"),
             DOES_NOT_MATCH),
    FileCase("letters in the SOP Instance UID", _with(SOPInstanceUID=f"{ROOT}.abc"),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("letters in the Study Instance UID", _with(StudyInstanceUID="1.2.x.4"),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("a space inside the Series Instance UID", _with(SeriesInstanceUID="1.2 3.4"),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("a trailing dot in the SOP Instance UID", _with(SOPInstanceUID=f"{ROOT}.7."),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    # -- SOP classes that are not storage ----------------------------------------------------
    FileCase("Verification as SOP Class", _with(SOPClassUID="1.2.840.10008.1.1"),
             NOT_SUPPORTED),
    FileCase("Study Root Find as SOP Class", _with(SOPClassUID="1.2.840.10008.5.1.4.1.2.2.1"),
             NOT_SUPPORTED),
    FileCase("Modality Worklist Find as SOP Class",
             _with(SOPClassUID="1.2.840.10008.5.1.4.31"), NOT_SUPPORTED),
    FileCase("Storage Commitment as SOP Class", _with(SOPClassUID="1.2.840.10008.1.20.1"),
             NOT_SUPPORTED),
    FileCase("a media storage directory", _with(SOPClassUID="1.2.840.10008.1.3.10"),
             NOT_SUPPORTED),
    FileCase("an unknown SOP Class", _with(SOPClassUID="1.2.3.4.5.6.7"), NOT_SUPPORTED),
    # -- deflate ------------------------------------------------------------------------------
    FileCase("deflate bomb", deflate_bomb, OUT_OF_RESOURCES),
    FileCase("deflated body that is not deflate", _deflate_garbage, CANNOT_UNDERSTAND),
    FileCase("deflated body cut short", _deflate_cut, CANNOT_UNDERSTAND),
    # -- pixel data and transfer syntax --------------------------------------------------------
    FileCase("JPEG Baseline syntax, native pixels", _ts(JPEGBaseline8Bit,
                                                        lambda: image(bits=8)),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("JPEG 2000 syntax, native pixels", _ts(JPEG2000Lossless), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("RLE syntax, native pixels", _ts(RLELossless), DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("native syntax, encapsulated pixels", _encapsulated_native_ts, DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("native pixels half as long as the image", _pixels(ROWS * COLS), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("native pixels two bytes short", _pixels(ROWS * COLS * 2 - 2), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("no Pixel Data in an image class", _with(PixelData=None), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("pixels without Rows", _with(Rows=None), DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("pixels without Bits Allocated", _with(BitsAllocated=None), DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("Rows of zero", _with(Rows=0), DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("Number of Frames not a number", _frames_not_a_number, DOES_NOT_MATCH,
             DOES_NOT_MATCH),
    FileCase("Number of Frames larger than the pixels", _with(NumberOfFrames=4),
             DOES_NOT_MATCH, DOES_NOT_MATCH),
    FileCase("Float Pixel Data too short", _float_pixels_short, DOES_NOT_MATCH,
             DOES_NOT_MATCH),
]


# ------------------------------------------------------------------ whole request bodies

def ok_part() -> bytes:
    return _valid()


def _parts(*parts: bytes, boundary: str = "b0undary", part_headers: str = "Content-Type: "
           "application/dicom\r\n") -> bytes:
    out = b""
    for p in parts:
        out += f"--{boundary}\r\n{part_headers}\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


def _many_parts(n: int) -> bytes:
    return _parts(*[b"x" * 10] * n)


BODY_CASES: list[BodyCase] = [
    BodyCase("not multipart", "application/dicom", ok_part, 415),
    BodyCase("multipart of DICOM JSON", 'multipart/related; type="application/dicom+json"; '
             "boundary=b0undary", lambda: _parts(b"{}"), 415),
    BodyCase("multipart/mixed", "multipart/mixed; boundary=b0undary", lambda: _parts(ok_part()),
             415),
    BodyCase("no boundary parameter", 'multipart/related; type="application/dicom"',
             lambda: _parts(ok_part()), 400),
    BodyCase("boundary of 71 characters", 'multipart/related; type="application/dicom"; '
             "boundary=" + "b" * 71, lambda: _parts(ok_part(), boundary="b" * 71), 400),
    BodyCase("boundary not in the body", STOW_TYPE,
             lambda: _parts(ok_part(), boundary="other"), 400),
    BodyCase("empty body", STOW_TYPE, lambda: b"", 400),
    BodyCase("no parts", STOW_TYPE, lambda: b"--b0undary--\r\n", 400),
    BodyCase("no close delimiter", STOW_TYPE, lambda: _parts(ok_part())[:-14], 400),
    BodyCase("ends right after a delimiter", STOW_TYPE,
             lambda: b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + ok_part()
             + b"\r\n--b0undary", 400),
    BodyCase("ends inside part headers", STOW_TYPE,
             lambda: b"--b0undary\r\nContent-Type: appl", 400),
    BodyCase("garbage after a delimiter", STOW_TYPE,
             lambda: b"--b0undary garbage\r\n\r\n" + ok_part() + b"\r\n--b0undary--", 400),
    BodyCase("header line without a colon", STOW_TYPE,
             lambda: _parts(ok_part(), part_headers="Content-Type application/dicom\r\n"), 400),
    BodyCase("part headers of 17 KiB", STOW_TYPE,
             lambda: _parts(ok_part(), part_headers="Content-Type: application/dicom\r\n"
                            f"X-Padding: {'p' * 17 * 1024}\r\n"), 400),
    BodyCase("more parts than allowed", STOW_TYPE, lambda: _many_parts(11), 413,
             env={"MAX_PARTS_PER_REQUEST": "10"}),
    BodyCase("a part that is a PDF", STOW_TYPE,
             lambda: _parts(b"%PDF-1.4", part_headers="Content-Type: application/pdf\r\n"),
             400, CANNOT_UNDERSTAND),
    BodyCase("a part in base64", STOW_TYPE,
             lambda: _parts(ok_part(), part_headers="Content-Type: application/dicom\r\n"
                            "Content-Transfer-Encoding: base64\r\n"), 400, CANNOT_UNDERSTAND),
    BodyCase("a part of 10 bytes", STOW_TYPE, lambda: _parts(b"0123456789"), 400,
             CANNOT_UNDERSTAND),
    BodyCase("an empty part", STOW_TYPE, lambda: _parts(b""), 400, CANNOT_UNDERSTAND),
    BodyCase("two thousand tiny parts", STOW_TYPE, lambda: _many_parts(2000), 400,
             CANNOT_UNDERSTAND),
]

__all__ = ["BODY_CASES", "BOMB_LIMIT", "FILE_CASES", "BodyCase", "FileCase", "meta_end"]
