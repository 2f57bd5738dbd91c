"""The streaming multipart/related parser and writer, on their own (no server)."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from app.dicom.multipart import (
    MultipartError,
    MultipartReader,
    parse_accept,
    parse_media_type,
    write_parts,
)


def _read_all(chunks, boundary: str) -> list[tuple[dict, bytes]]:
    reader = MultipartReader(chunks, boundary)
    return [(dict(p.headers), b"".join(p.chunks())) for p in reader]


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


PAYLOADS = [b"", b"\r\n", b"--b", b"\r\n--bo", os.urandom(3000), b"x" * 10 + b"\r\n--boundar"]


def test_parts_survive_any_chunking_including_one_byte_chunks():
    body = b"".join(write_parts((({"Content-Type": "application/dicom"}, [p]) for p in PAYLOADS),
                                "boundary"))
    for size in (1, 2, 3, 7, 64, len(body)):
        parts = _read_all(_split(body, size), "boundary")
        assert [c for _, c in parts] == PAYLOADS, size
        assert all(h == {"content-type": "application/dicom"} for h, _ in parts)


def test_preamble_leading_crlf_padding_headerless_parts_and_epilogue():
    body = (b"preamble text\r\n--b  \t\r\n\r\nfirst\r\n--b\r\nContent-Type: a/b\r\n"
            b"X-Long: one\r\n two\r\n\r\nsecond\r\n--b--\r\nepilogue ignored")
    parts = _read_all([body], "b")
    assert parts == [({}, b"first"), ({"content-type": "a/b", "x-long": "one two"}, b"second")]
    # dicomweb-client's bodies start with CRLF before the first delimiter.
    assert _read_all([b"\r\n--b\r\n\r\nx\r\n--b--"], "b") == [({}, b"x")]


@pytest.mark.parametrize("body,message", [
    (b"--other\r\n\r\nx\r\n--other--", "does not occur"),
    (b"--b\r\n\r\nhalf a part", "close delimiter never arrived"),
    (b"--b\r\nContent-Type: application/dicom", "inside part headers"),
    (b"--bX\r\n\r\nx\r\n--b--", "after a boundary delimiter"),
    (b"--b", "right after a delimiter"),
])
def test_malformed_bodies_are_refused(body, message):
    with pytest.raises(MultipartError, match=message):
        _read_all(_split(body, 3), "b")


def test_invalid_boundary_is_refused():
    with pytest.raises(MultipartError):
        MultipartReader([b""], "x" * 71)
    with pytest.raises(MultipartError):
        MultipartReader([b""], "bad\x00boundary")


def test_media_type_and_accept_parsing():
    mt = parse_media_type('Multipart/Related; type="application/dicom"; boundary="a;b=c"')
    assert mt.type == "multipart/related"
    assert mt.params == {"type": "application/dicom", "boundary": "a;b=c"}
    assert parse_media_type("multipart/related; type=application/dicom; boundary=x").params[
        "type"] == "application/dicom"
    ranges = parse_accept('application/json;q=0.5, multipart/related; type="application/dicom",'
                          ' image/jpeg;q=0')
    assert [r.type for r in ranges] == ["multipart/related", "application/json"]
    assert parse_accept(None)[0].type == "*/*"


def test_fifty_megabytes_parse_in_bounded_memory(tmp_path, monkeypatch):
    """~50 MB of parts go from chunks to spooled files; memory holds about one chunk."""
    from tests.conftest import configure_env

    configure_env(monkeypatch, tmp_path / "var")
    from app.dicom.store import spool

    chunk = os.urandom(64 * 1024)
    part_chunks = 160  # 10 MiB per part
    boundary = "mem-test-boundary"

    def body():
        for _ in range(5):
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            for _ in range(part_chunks):
                yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    tracemalloc.start()
    try:
        reader = MultipartReader(body(), boundary)
        sizes = []
        for part in reader:
            tmp, _, size = spool(part.chunks())
            sizes.append(size)
            tmp.unlink()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == [part_chunks * len(chunk)] * 5
    assert reader.bytes_read > 50_000_000
    assert reader.peak_buffered < 2 * len(chunk) + 256
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes"
