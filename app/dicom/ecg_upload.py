"""ECG carts that speak WFDB: an uploaded record (header plus signal file) becomes a DICOM ECG
waveform instance and is ingested like any other instance.

The files land in a private temporary folder under the store; the header names its signal file,
so the signal upload is saved under that name. Nothing is left behind on any error.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.dicom import store
from app.dicom.waveform import WaveformWriteError, wfdb_to_dicom

_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
MAX_HEADER_BYTES = 1 << 20


class EcgUploadError(ValueError):
    """The upload is not a usable WFDB record."""


@dataclass(frozen=True)
class Converted:
    stored: store.Stored
    sop_class_uid: str
    leads: list[str]
    duration_s: float
    notes: list[str]


def _record_and_signal_names(header: bytes) -> tuple[str, list[str]]:
    try:
        lines = [ln.strip() for ln in header.decode("ascii").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except UnicodeDecodeError as exc:
        raise EcgUploadError("the header is not a WFDB .hea text file") from exc
    if len(lines) < 2:
        raise EcgUploadError("the header has no signal lines")
    record = lines[0].split()[0].split("/")[0]
    try:
        n_sig = int(lines[0].split()[1])
    except (IndexError, ValueError) as exc:
        raise EcgUploadError("the header's record line has no signal count") from exc
    signals = list(dict.fromkeys(ln.split()[0] for ln in lines[1:1 + n_sig]))
    for name in (record, *signals):
        if not _NAME.match(name) or name in (".", ".."):
            raise EcgUploadError(f"unsafe or invalid file name {name!r} in the header")
    return record, signals


def convert_and_store(session_factory, header: bytes, signals: dict[str, object], *,
                      source: str, **patient: str) -> Converted:
    """Write the record to a temporary folder, convert it, store the DICOM instance.

    ``signals`` maps uploaded file names to iterables of bytes. Every signal file the header
    names must be there; a single upload stands for a header that names a single file."""
    if len(header) > MAX_HEADER_BYTES:
        raise EcgUploadError("the header file is too large")
    record, names = _record_and_signal_names(header)
    if len(names) == 1 and len(signals) == 1:
        signals = {names[0]: next(iter(signals.values()))}
    missing = [n for n in names if n not in signals]
    if missing:
        raise EcgUploadError(f"the header names signal file(s) {missing}; upload them too")
    folder = Path(tempfile.mkdtemp(prefix="ecg-", dir=store.tmp_dir()))
    try:
        (folder / f"{record}.hea").write_bytes(header)
        for name in names:
            with open(folder / name, "wb") as fh:
                for chunk in signals[name]:
                    fh.write(chunk)
        out = folder / f"{record}.dcm"
        try:
            ds = wfdb_to_dicom(folder / record, out, **{k: v for k, v in patient.items() if v})
        except (WaveformWriteError, ValueError, OSError, IndexError) as exc:
            raise EcgUploadError(f"not a usable WFDB record: {exc}") from exc
        report = ds.medgate_report
        stored = store.store_path(session_factory, out, source=source)
        return Converted(stored, report.sop_class_uid, list(report.leads), report.duration_s,
                         list(report.notes))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
