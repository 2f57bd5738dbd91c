"""``medgate ingest``: send DICOM files to a DICOMweb server over STOW-RS (PS3.18 10.5).

Walks the given files and folders, keeps the DICOM Part 10 files (``DICM`` after the 128-byte
preamble), and POSTs them to ``{url}/dicomweb/studies`` in batches. Each request body is
streamed (a generator of file chunks, sent with chunked transfer encoding), so the client's
memory does not grow with the batch. The server's Store Instances Response (DICOM JSON) is read
for what was stored and what failed, and why. A rich progress bar counts bytes sent.

This is a client: it talks HTTP only and never imports the server's database or store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.dicom.multipart import content_type, file_chunks, new_boundary, write_parts

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_BATCH = 50
DEFAULT_BATCH_BYTES = 256 * 1024 * 1024

# PS3.18 Table I.2-2 and PS3.4 Annex B, for people reading the summary.
FAILURE_MEANINGS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance (different content already stored)",
    0x0122: "SOP class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class (or the target study)",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}


def failure_meaning(code: int) -> str:
    if code in FAILURE_MEANINGS:
        return FAILURE_MEANINGS[code]
    if code & 0xFF00 == 0xA700:
        return "out of resources"
    if code & 0xFF00 == 0xA900:
        return "data set does not match SOP class"
    if code & 0xF000 == 0xC000:
        return "cannot understand"
    return "failure"


def is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def collect(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(DICOM files, other files) under ``paths``, in a stable order."""
    dicom: list[Path] = []
    other: list[Path] = []
    for root in paths:
        if root.is_dir():
            candidates = sorted(p for p in root.rglob("*") if p.is_file())
        elif root.is_file():
            candidates = [root]
        else:
            raise FileNotFoundError(f"no such file or folder: {root}")
        for p in candidates:
            (dicom if is_dicom_file(p) else other).append(p)
    return dicom, other


def batches(files: list[Path], size: int, max_bytes: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    total = 0
    for f in files:
        n = f.stat().st_size
        if batch and (len(batch) >= size or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(f)
        total += n
    if batch:
        yield batch


@dataclass
class Failure:
    where: str  # file, or SOP Instance UID when the server named no file
    reason: str


@dataclass
class Summary:
    sent: int = 0
    stored: int = 0
    failed: list[Failure] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _values(item: dict, tag: str) -> list:
    return (item.get(tag) or {}).get("Value") or []


def _sop_uid_of(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001 - only used to name a file in a failure line
        return ""


def _body(files: list[Path], boundary: str, advance) -> Iterator[bytes]:  # noqa: ANN001
    def counted(path: Path) -> Iterator[bytes]:
        for chunk in file_chunks(path):
            advance(len(chunk))
            yield chunk

    return write_parts((({"Content-Type": "application/dicom"}, counted(f)) for f in files),
                       boundary)


def _read_store_response(body: dict, files: list[Path]) -> tuple[int, list[Failure]]:
    """(stored, failures) from a Store Instances Response. A failure names its file: by SOP
    Instance UID, or - for a part the server could not read far enough to find one - the
    next file, in order, that is neither stored nor failed by UID."""
    stored_items = _values(body, "00081199")
    failed_items = _values(body, "00081198")
    if not failed_items:
        return len(stored_items), []
    uid_of = {f: _sop_uid_of(f) for f in files}
    stored_uids = {(_values(i, "00081155") or [""])[0] for i in stored_items}
    failed_uids = {(_values(i, "00081155") or [""])[0] for i in failed_items} - {""}
    unnamed = iter([f for f in files if uid_of[f] not in stored_uids | failed_uids])
    by_uid = {uid: f for f, uid in uid_of.items() if uid}
    failures = []
    for item in failed_items:
        uid = (_values(item, "00081155") or [""])[0]
        code = (_values(item, "00081197") or [0])[0]
        where = by_uid.get(uid) if uid else next(unnamed, None)
        failures.append(Failure(str(where or uid or "(unnamed part)"),
                                f"0x{code:04X} {failure_meaning(code)}"))
    return len(stored_items), failures


def send_batch(client: httpx.Client, url: str, key: str, files: list[Path],
               advance) -> tuple[int, list[Failure]]:  # noqa: ANN001
    """POST one batch; returns (stored, failures)."""
    boundary = new_boundary()
    response = client.post(
        f"{url.rstrip('/')}/dicomweb/studies",
        content=_body(files, boundary, advance),
        headers={"Content-Type": content_type(boundary), "Accept": "application/dicom+json",
                 "Authorization": f"Bearer {key}"})
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("application/dicom+json") or ctype.startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and ("00081199" in body or "00081198" in body):
            return _read_store_response(body, files)
    # A refusal of the whole request: problem+json (401, 403, 413, 415...).
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        detail = payload.get("detail") or payload.get("title")
    else:
        detail = response.text[:200]
    reason = f"HTTP {response.status_code}: {detail}"
    return 0, [Failure(str(f), reason) for f in files]


def ingest(paths: list[Path], url: str = DEFAULT_URL, key: str | None = None,
           batch: int = DEFAULT_BATCH, batch_bytes: int = DEFAULT_BATCH_BYTES,
           console: Console | None = None, timeout: float = 600.0) -> Summary:
    console = console or Console(stderr=True)
    key = key or os.environ.get("MEDGATE_API_KEY", "")
    if not key:
        raise ValueError("an API key is needed: --key or MEDGATE_API_KEY")
    if batch < 1:
        raise ValueError("--batch must be at least 1")
    files, other = collect(paths)
    summary = Summary(skipped=other)
    total = sum(f.stat().st_size for f in files)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as client, \
            Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"STOW-RS {len(files)} files", total=total)
        for group in batches(files, batch, batch_bytes):
            stored, failures = send_batch(client, url, key, group,
                                          lambda n: progress.advance(task, n))
            summary.sent += len(group)
            summary.stored += stored
            summary.failed.extend(failures)
    return summary


def report(summary: Summary, console: Console) -> None:
    console.print(f"sent {summary.sent}  stored [green]{summary.stored}[/green]  "
                  f"failed [red]{len(summary.failed)}[/red]  "
                  f"skipped (not DICOM) {len(summary.skipped)}")
    for f in summary.failed:
        console.print(f"  [red]failed[/red] {f.where}: {f.reason}", soft_wrap=True)


def main(paths: list[Path], url: str = DEFAULT_URL, key: str | None = None,
         batch: int = DEFAULT_BATCH) -> int:
    """Run and print; the exit code is 0 when everything was stored, 1 when anything failed,
    2 when the command could not run (no key, no such path, server unreachable)."""
    console = Console(stderr=True)
    try:
        summary = ingest(paths, url, key, batch, console=console)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] could not talk to {url}: {exc}")
        return 2
    report(summary, console)
    return 0 if summary.ok else 1


__all__ = ["Summary", "collect", "ingest", "main"]
