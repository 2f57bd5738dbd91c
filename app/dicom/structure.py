"""The byte structure of an encoded data set, checked without decoding a value.

pydicom reads a value cut short, an item longer than its sequence or a sequence that is never
closed without complaint (it stops at the end of the file). A stored file must be whole, so
:func:`walk` follows the encoding itself (PS3.5 7.1 data elements, 7.5 nesting of data sets,
A.4 encapsulation): every defined length fits inside its container, every undefined length
reaches its delimiter, items sit only inside sequences and encapsulated values. Values are
skipped with a seek, so a file of any size is walked in constant memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
              0x7FE00009: "DoubleFloatPixelData"}
# PS3.5 Table 7.1-1: explicit VRs with a reserved field and a 4-byte length
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
                  b"LT", b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ",
                  b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT",
                  b"UV"})
# Nesting deeper than any IOD needs is a crafted file (and would exhaust the stack).
MAX_DEPTH = 32


class Malformed(ValueError):
    """The encoding breaks PS3.5: cut off, lengths that disagree, misplaced delimiters."""


@dataclass(frozen=True)
class PixelElement:
    """The top-level pixel data element: its keyword, length (UNDEFINED when encapsulated) and
    whether its value opens with an item (the Basic Offset Table of PS3.5 A.4)."""

    keyword: str
    length: int
    starts_with_item: bool


class _Walker:
    def __init__(self, fp: BinaryIO, size: int, implicit: bool, little: bool) -> None:
        self.fp, self.size = fp, size
        self.implicit, self.little = implicit, little
        self.pixels: PixelElement | None = None

    def _header(self, what: str) -> tuple[int, bytes]:
        pos = self.fp.tell()
        head = self.fp.read(8)
        if len(head) < 8:
            raise Malformed(f"cut off inside {what} at byte {pos}")
        return pos, head

    def _tag_length(self, head: bytes) -> tuple[int, int]:
        group, elem, length = struct.unpack("<HHI" if self.little else ">HHI", head)
        return group << 16 | elem, length

    def elements(self, end: int | None, depth: int) -> None:
        """Elements up to ``end`` (a defined-length container) or, with ``end`` None, to the
        item delimitation item that closes an undefined-length item."""
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH}")
        fmt = "<" if self.little else ">"
        outer = self.implicit
        self._detect_vr_encoding()
        try:
            self._elements(end, depth, fmt)
        finally:
            self.implicit = outer

    def _detect_vr_encoding(self) -> None:
        """Read a data set the way pydicom does (and so the viewers built on it): when its
        first element has a VR where the transfer syntax says there is none, or none where
        it says there is one, the data set is read as it is actually encoded."""
        pos = self.fp.tell()
        head = self.fp.read(6)
        self.fp.seek(pos)
        if len(head) == 6 and head[:2] not in (b"\xfe\xff", b"\xff\xfe"):  # not a delimiter
            self.implicit = head[4:6] not in _VRS

    def _elements(self, end: int | None, depth: int, fmt: str) -> None:
        while True:
            pos = self.fp.tell()
            if end is not None and pos >= end:
                if pos > end:
                    raise Malformed(f"an element runs past the end of its item at byte {end}")
                return
            if end is None and pos >= self.size:
                raise Malformed("an undefined-length item is never closed")
            _, head = self._header("an element header")
            group, elem = struct.unpack(fmt + "HH", head[:4])
            tag = group << 16 | elem
            if tag == ITEM_END:
                if end is None and depth:
                    return
                raise Malformed(f"an item delimiter outside an undefined-length item at {pos}")
            if group == 0xFFFE:
                raise Malformed(f"an item tag ({tag:08X}) where an element belongs, at {pos}")
            vr: bytes | None = None
            if self.implicit:
                (length,) = struct.unpack(fmt + "I", head[4:])
            else:
                vr = head[4:6]
                if vr in _LONG_VRS:
                    extra = self.fp.read(4)
                    if len(extra) < 4:
                        raise Malformed(f"cut off inside the header of ({tag:08X})")
                    (length,) = struct.unpack(fmt + "I", extra)
                else:
                    (length,) = struct.unpack(fmt + "H", head[6:])
            value_at = self.fp.tell()
            limit = end if end is not None else self.size
            if depth == 0 and tag in PIXEL_TAGS:
                first = self.fp.read(4)
                self.fp.seek(value_at)
                opens = len(first) == 4 and struct.unpack(fmt + "HH", first) == (0xFFFE, 0xE000)
                self.pixels = PixelElement(PIXEL_TAGS[tag], length, opens)
            sequence = vr == b"SQ" or (vr is None and _is_sequence(tag, length))
            if length == UNDEFINED:
                if vr == b"UN" or sequence:
                    # PS3.5 6.2.2: an undefined-length UN is a sequence in implicit VR LE
                    self._nested(vr == b"UN").items(None, depth + 1)
                elif tag == 0x7FE00010 or vr in (b"OB", b"OW"):
                    self.fragments(tag)
                else:
                    raise Malformed(f"({tag:08X}) {(vr or b'').decode('latin-1')} has an "
                                    "undefined length")
                continue
            if value_at + length > limit:
                raise Malformed(f"truncated: ({tag:08X}) needs {value_at + length} bytes, "
                                f"{'its item ends at' if end is not None else 'the file has'} "
                                f"{limit}")
            if sequence:
                self.items(value_at + length, depth + 1)
            self.fp.seek(value_at + length)

    def _nested(self, un: bool) -> _Walker:
        if not un:
            return self
        walker = _Walker(self.fp, self.size, True, True)
        return walker

    def items(self, end: int | None, depth: int) -> None:
        """The items of a sequence, up to ``end`` or its sequence delimitation item."""
        while True:
            pos = self.fp.tell()
            if end is not None and pos >= end:
                if pos > end:
                    raise Malformed(f"an item runs past the end of its sequence at byte {end}")
                return
            _, head = self._header("a sequence")
            tag, length = self._tag_length(head)
            if tag == SEQUENCE_END:
                if end is None:
                    return
                raise Malformed(f"a sequence delimiter in a defined-length sequence at {pos}")
            if tag != ITEM:
                raise Malformed(f"({tag:08X}) inside a sequence, where only items belong")
            if length == UNDEFINED:
                self.elements(None, depth)
                continue
            limit = end if end is not None else self.size
            if pos + 8 + length > limit:
                raise Malformed(f"an item of {length} bytes at byte {pos} runs past "
                                f"{'its sequence' if end is not None else 'the file'}")
            self.elements(pos + 8 + length, depth)
            self.fp.seek(pos + 8 + length)

    def fragments(self, tag: int) -> None:
        """The items of an encapsulated value (PS3.5 A.4) up to its sequence delimiter."""
        while True:
            pos, head = self._header(f"the encapsulated value of ({tag:08X}): never closed")
            item, length = self._tag_length(head)
            if item == SEQUENCE_END:
                return
            if item != ITEM or length == UNDEFINED:
                raise Malformed(f"the encapsulated value of ({tag:08X}) has a bad item at {pos}")
            if pos + 8 + length > self.size:
                raise Malformed(f"truncated: a fragment at byte {pos} needs {length} bytes")
            self.fp.seek(pos + 8 + length)


def _is_sequence(tag: int, length: int) -> bool:
    """Implicit VR carries no VR: the data dictionary says SQ, or (private and unknown tags)
    an undefined length does (pydicom reads them the same way)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return length == UNDEFINED


def file_meta_end(fp: BinaryIO, size: int) -> int:
    """Where the data set starts: after the group 0002 elements that follow ``DICM`` (always
    Explicit VR Little Endian, PS3.10 7.1). Checks (0002,0000) File Meta Information Group
    Length against them when it is there: a reader that trusts it must land on the data set."""
    fp.seek(132)
    declared = None
    while True:
        pos = fp.tell()
        head = fp.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            break
        vr = head[4:6]
        if vr in _LONG_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                raise Malformed("cut off inside the file meta")
            (length,) = struct.unpack("<I", extra)
        else:
            (length,) = struct.unpack("<H", head[6:])
        if fp.tell() + length > size:
            raise Malformed("cut off inside the file meta")
        if struct.unpack("<HH", head[:4]) == (0x0002, 0x0000) and length == 4:
            (declared,) = struct.unpack("<I", fp.read(4))
            start = fp.tell()
        else:
            fp.seek(fp.tell() + length)
    fp.seek(pos)
    if declared is not None and start + declared != pos:
        raise Malformed(f"the File Meta Information Group Length (0002,0000) says {declared} "
                        f"bytes, the file meta has {pos - start} (PS3.10 7.1)")
    return pos


def walk(fp: BinaryIO, size: int, implicit: bool, little: bool) -> PixelElement | None:
    """Check the data set from ``fp``'s position to ``size``; return the top-level pixel data
    element, if any. Raises :class:`Malformed`."""
    walker = _Walker(fp, size, implicit, little)
    walker.elements(size, 0)
    return walker.pixels


__all__ = ["Malformed", "PixelElement", "PIXEL_TAGS", "file_meta_end", "walk"]
