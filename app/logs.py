"""Logs without patient data. Two sources used to carry it: the HTTP access log, whose request
line holds QIDO query strings (``PatientName=…&PatientID=…``), and pydicom's warnings about
malformed files, which quote raw element values, names included. Both are filtered here, in
every process that logs (``serve``, ``worker``, ``dicom-scp``); the rest of MedGate logs UIDs,
ids and reasons, never demographics."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlsplit

REDACTED = "…"
# A quoted value: '...', "..." or a bytes dump b'...', as pydicom quotes element values.
_QUOTED = re.compile(r"b?'[^']*'|" r'b?"[^"]*"')


def redact_path(path: str) -> str:
    """``/dicomweb/studies?PatientName=Doe*&limit=5`` → ``/dicomweb/studies?PatientName=…&
    limit=…``: the keys stay (what was asked), the values go (who was asked for)."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    keys = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    return f"{parts.path}?" + "&".join(f"{k}={REDACTED}" for k in keys)


def redact_text(text: str) -> str:
    return _QUOTED.sub(REDACTED, text)


class AccessLogFilter(logging.Filter):
    """For uvicorn's access logger: its args are (client, method, path, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_path(args[2]), args[3], args[4])
        return True


class ValueFilter(logging.Filter):
    """For pydicom and Python warnings: quoted element values are replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = ()
        return True


def install() -> None:
    """Attach the filters (idempotent); Python warnings go through logging so they pass one."""
    logging.captureWarnings(True)
    for name, flt in (("uvicorn.access", AccessLogFilter), ("pydicom", ValueFilter),
                      ("py.warnings", ValueFilter)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, flt) for f in logger.filters):
            logger.addFilter(flt())
