"""Streaming ``multipart/related`` (RFC 2387, body syntax of RFC 2046 5.1) for DICOMweb.

STOW-RS request bodies (PS3.18 10.5.1.2) and WADO-RS responses (PS3.18 8.7.3.2 / 10.4.3) are
``multipart/related`` messages. Both directions here are incremental:

- :class:`MultipartReader` pulls chunks from any iterable and yields one :class:`Part` at a time;
  a part's content is itself an iterator of chunks. At no moment does the reader hold more than
  one incoming chunk plus one delimiter's length of look-behind (``peak_buffered`` records it),
  so an upload of any size is parsed in bounded memory.
- :func:`write_parts` yields the bytes of a message whose part contents are iterators too (file
  chunks), so a study is never loaded whole to be sent.

This module knows nothing about DICOM or HTTP frameworks; it must never buffer a whole part.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# RFC 2046 5.1.1: bchars, 1 to 70 of them, not ending in a space.
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
MAX_HEADER_BYTES = 16 * 1024
FILE_CHUNK = 1 << 20


class MultipartError(ValueError):
    """The body is not a well-formed multipart message (bad boundary, cut off, oversized
    headers)."""


class TooManyParts(MultipartError):
    """The body has more parts than the reader was told to take."""


@dataclass(frozen=True)
class MediaType:
    """A media type (or media range) with lower-cased name and parameter names."""

    type: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def q(self) -> float:
        try:
            return float(self.params.get("q", "1"))
        except ValueError:
            return 0.0


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    out, cur, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out, escaped = [], False
        for ch in inner:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_media_type(value: str) -> MediaType:
    """Parse ``type/subtype; name=value; name="quoted value"`` (RFC 9110 8.3.1)."""
    pieces = _split_outside_quotes(value or "", ";")
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        if eq and name.strip():
            params[name.strip().lower()] = _unquote(val)
    return MediaType(pieces[0].strip().lower(), params)


def parse_accept(value: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, best first; an absent header accepts anything."""
    if not value or not value.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(v) for v in _split_outside_quotes(value, ",") if v.strip()]
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


def check_boundary(boundary: str) -> bytes:
    raw = boundary.encode("latin-1", errors="replace")
    if not 1 <= len(raw) <= 70 or raw.endswith(b" ") or not set(raw) <= _BCHARS:
        raise MultipartError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")
    return raw


class Part:
    """One body part: its headers, and its content as chunks read on demand."""

    def __init__(self, reader: MultipartReader, index: int, headers: dict[str, str]) -> None:
        self._reader = reader
        self.index = index
        self.headers = headers
        self.size = 0
        self._done = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def chunks(self) -> Iterator[bytes]:
        """The part's content, chunk by chunk; ends at the next delimiter."""
        if self._done:
            return
        for chunk in self._reader._content():
            self.size += len(chunk)
            yield chunk
        self._done = True

    def drain(self) -> None:
        for _ in self.chunks():
            pass


class MultipartReader:
    """Incremental parser: ``for part in MultipartReader(chunks, boundary): ...``.

    Each part must be read (or is drained) before the next one is produced. Raises
    :class:`MultipartError` for a body whose delimiter never appears, that ends before the
    close delimiter, or whose part headers exceed ``max_header_bytes``."""

    def __init__(self, chunks: Iterable[bytes], boundary: str,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_parts: int | None = None) -> None:
        self._src = iter(chunks)
        self._delim = b"\r\n--" + check_boundary(boundary)
        # A leading CRLF lets the first delimiter (which may open the body) match like others.
        self._buf = bytearray(b"\r\n")
        self._max_header = max_header_bytes
        self._max_parts = max_parts
        self._eof = False
        self._closed = False
        self._current: Part | None = None
        self.parts = 0
        self.bytes_read = 0
        self.peak_buffered = 0

    # -- buffer management -------------------------------------------------------------------
    def _fill(self) -> bool:
        """Append the next non-empty chunk; False at the end of the input."""
        while not self._eof:
            try:
                chunk = next(self._src)
            except StopIteration:
                self._eof = True
                return False
            if chunk:
                self._buf += chunk
                self.bytes_read += len(chunk)
                if len(self._buf) > self.peak_buffered:
                    self.peak_buffered = len(self._buf)
                return True
        return False

    def _content(self) -> Iterator[bytes]:
        delim, keep = self._delim, len(self._delim) - 1
        while True:
            idx = self._buf.find(delim)
            if idx >= 0:
                if idx:
                    with memoryview(self._buf) as view:
                        out = bytes(view[:idx])
                    yield out
                del self._buf[:idx + len(delim)]
                return
            if len(self._buf) > keep:
                with memoryview(self._buf) as view:
                    out = bytes(view[:-keep])  # one copy (a bytearray slice would be two)
                del self._buf[:-keep]
                yield out
            if not self._fill():
                raise MultipartError("the body ended inside a part: the close delimiter "
                                     "never arrived (upload cut off?)")

    # -- parts -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Part]:
        self._skip_preamble()
        while True:
            if self._current is not None:
                self._current.drain()
                self._current = None
            if self._at_close_delimiter():
                self._closed = True
                self._drain_epilogue()
                return
            if self._max_parts is not None and self.parts >= self._max_parts:
                raise TooManyParts(f"the body has more than {self._max_parts} parts")
            headers = self._read_headers()
            self.parts += 1
            self._current = Part(self, self.parts - 1, headers)
            yield self._current

    def _skip_preamble(self) -> None:
        delim, keep = self._delim, len(self._delim) - 1
        while True:
            idx = self._buf.find(delim)
            if idx >= 0:
                del self._buf[:idx + len(delim)]
                return
            if len(self._buf) > keep:
                del self._buf[:-keep]
            if not self._fill():
                raise MultipartError("the multipart boundary given in Content-Type does not "
                                     "occur in the body")

    def _at_close_delimiter(self) -> bool:
        """After a delimiter: ``--`` closes the body; otherwise transport padding then CRLF."""
        while len(self._buf) < 2:
            if not self._fill():
                raise MultipartError("the body ended right after a delimiter")
        if self._buf[:2] == b"--":
            return True
        while True:
            idx = self._buf.find(b"\r\n")
            if idx >= 0:
                if self._buf[:idx].strip(b" \t"):
                    raise MultipartError("unexpected bytes after a boundary delimiter")
                del self._buf[:idx]  # keep the CRLF: the header block search starts with it
                return False
            if len(self._buf) > 256:
                raise MultipartError("unexpected bytes after a boundary delimiter")
            if not self._fill():
                raise MultipartError("the body ended inside a delimiter line")

    def _read_headers(self) -> dict[str, str]:
        while True:
            idx = self._buf.find(b"\r\n\r\n")
            if idx > self._max_header + 2:  # the block, not counting its leading CRLF
                raise MultipartError(f"part headers exceed {self._max_header} bytes")
            if idx >= 0:
                block = bytes(self._buf[2:idx])
                del self._buf[:idx + 4]
                return _parse_headers(block)
            if len(self._buf) > self._max_header:
                raise MultipartError(f"part headers exceed {self._max_header} bytes")
            if not self._fill():
                raise MultipartError("the body ended inside part headers")

    def _drain_epilogue(self) -> None:
        self._buf.clear()
        while self._fill():
            self._buf.clear()

    @property
    def complete(self) -> bool:
        """True once the close delimiter has been read."""
        return self._closed


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = ""
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


# -- writing ---------------------------------------------------------------------------------
def new_boundary() -> str:
    return f"medgate-{uuid.uuid4().hex}"


def content_type(boundary: str, part_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def file_chunks(path: Path, chunk_size: int = FILE_CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def write_parts(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]],
                boundary: str) -> Iterator[bytes]:
    """The bytes of a multipart message, produced part by part (RFC 2046 5.1.1 syntax)."""
    b = check_boundary(boundary)
    first = True
    for headers, body in parts:
        head = b"--" + b + b"\r\n" if first else b"\r\n--" + b + b"\r\n"
        first = False
        head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        yield head + b"\r\n"
        for chunk in body:
            if chunk:
                yield chunk
    yield (b"--" if first else b"\r\n--") + b + b"--\r\n"


__all__ = ["MediaType", "MultipartError", "MultipartReader", "Part", "TooManyParts", "content_type",
           "file_chunks", "new_boundary", "parse_accept", "parse_media_type", "write_parts"]
