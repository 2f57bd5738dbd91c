"""Export destinations: a DICOM AE (C-STORE) or a DICOMweb STOW-RS URL, and which domains and
report states go there (an empty list means all). Changes are audited."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Destination, utcnow
from app.security import audit

KINDS = ("dimse", "stow-rs")
DOMAINS = ("cxr", "ct", "ecg", "pathology")
STATES = ("draft", "edited", "final", "amended", "corrected")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash, 16 chars
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DestinationError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # invalid | exists | not-found


def to_dict(d: Destination) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name, "kind": d.kind, "domains": list(d.domains or []),
                           "states": list(d.states or [])}
    if d.kind == "dimse":
        out |= {"ae_title": d.ae_title, "host": d.host, "port": d.port,
                "calling_ae": d.calling_ae or None}
    else:  # header values may be credentials: their names only
        out |= {"url": d.url, "headers": sorted((d.headers or {}).keys())}
    return out


def _check(values: dict[str, Any]) -> dict[str, Any]:
    kind = values.get("kind")
    if kind not in KINDS:
        raise DestinationError("invalid", f"kind must be one of {KINDS}, not {kind!r}")
    for key, allowed in (("domains", DOMAINS), ("states", STATES)):
        given = list(values.get(key) or [])
        bad = [v for v in given if v not in allowed]
        if bad:
            raise DestinationError("invalid", f"{key} {bad} unknown; allowed: {list(allowed)}")
        values[key] = list(dict.fromkeys(given))
    if kind == "dimse":
        for key in ("ae_title", "host"):
            if not values.get(key):
                raise DestinationError("invalid", f"a DICOM destination needs {key}")
        for key in ("ae_title", "calling_ae"):
            v = values.get(key) or ""
            if v and not _AE.match(v.strip()):
                raise DestinationError("invalid", f"{key} {v!r} is not an AE title (1-16 "
                                                  "characters, no backslash; PS3.5 6.2)")
        port = values.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise DestinationError("invalid", "a DICOM destination needs a port 1-65535")
        values |= {"url": "", "headers": {}}
    else:
        url = urlparse(values.get("url") or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise DestinationError("invalid", "a STOW-RS destination needs an http(s) URL, "
                                              "the DICOMweb base (…/dicom-web)")
        headers = values.get("headers") or {}
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise DestinationError("invalid", "headers must be an object of strings")
        values |= {"ae_title": "", "host": "", "port": None, "calling_ae": ""}
    return values


def get(session: Session, name: str) -> Destination:
    d = session.scalar(select(Destination).where(Destination.name == name))
    if d is None:
        raise DestinationError("not-found", f"no destination {name!r}")
    return d


def list_all(session: Session) -> list[Destination]:
    return list(session.scalars(select(Destination).order_by(Destination.name)))


def create(session: Session, actor: str, **values: Any) -> Destination:
    name = values.get("name") or ""
    if not _NAME.match(name):
        raise DestinationError("invalid", f"name {name!r}: 1-64 letters, digits, . _ -")
    if session.scalar(select(Destination.id).where(Destination.name == name)):
        raise DestinationError("exists", f"destination {name!r} exists")
    values = _check(dict(values))
    now = utcnow()
    d = Destination(name=name, kind=values["kind"], ae_title=values.get("ae_title") or "",
                    host=values.get("host") or "", port=values.get("port"),
                    calling_ae=values.get("calling_ae") or "", url=values.get("url") or "",
                    headers=values.get("headers") or {}, domains=values["domains"],
                    states=values["states"], created_at=now, updated_at=now)
    session.add(d)
    session.flush()
    audit.record(session, actor, "destination.create", "destination", name, detail=to_dict(d))
    return d


def update(session: Session, name: str, actor: str, **changes: Any) -> Destination:
    d = get(session, name)
    merged = {"kind": d.kind, "ae_title": d.ae_title, "host": d.host, "port": d.port,
              "calling_ae": d.calling_ae, "url": d.url, "headers": d.headers,
              "domains": d.domains, "states": d.states, **changes}
    values = _check(merged)
    before = to_dict(d)
    for key in ("kind", "ae_title", "host", "port", "calling_ae", "url", "headers", "domains",
                "states"):
        setattr(d, key, values.get(key) if key != "calling_ae" else values.get(key) or "")
    d.updated_at = utcnow()
    after = to_dict(d)
    audit.record(session, actor, "destination.update", "destination", name,
                 detail={"changed": {k: [before.get(k), v] for k, v in after.items()
                                     if before.get(k) != v}})
    return d


def delete(session: Session, name: str, actor: str) -> dict[str, Any]:
    d = get(session, name)
    gone = to_dict(d)
    session.delete(d)
    audit.record(session, actor, "destination.delete", "destination", name)
    return gone
