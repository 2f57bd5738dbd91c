"""Known DICOM peers: who may associate with the SCP, from where, and what each may do.

One row of ``dicom_peer`` per application entity, keyed by its AE title. The SCP reads the row
of the calling AE title once per association (:func:`authorise`), so a change applies to the
next association without a restart. Every change is audited in the caller's session.

An AE title is PS3.5 Table 6.2-1 VR AE: at most 16 characters of the default character
repertoire without backslash (5CH) or control characters; leading and trailing spaces are not
significant, and a value of spaces only is not allowed. This module never talks to the network
and never decides what a refusal looks like on the wire (that is :mod:`app.dicom.scp`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import DicomPeer, utcnow
from app.security import audit

AE_TITLE_MAX = 16       # PS3.5 Table 6.2-1: 16 bytes maximum
DESCRIPTION_MAX = 128   # the column's length
HOST_MAX = 255          # RFC 1035 2.3.4: a name is at most 255 octets
ACTIONS = ("associate", "store", "query", "retrieve")
RIGHTS = ("can_store", "can_query", "can_retrieve")
EDITABLE = ("host", "port", *RIGHTS, "description")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class PeerError(ValueError):
    """A peer request that cannot be honoured; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "invalid", "exists" or "not-found"


def _invalid(message: str) -> PeerError:
    return PeerError("invalid", message)


# ---------------------------------------------------------------- validation

def normalise_ae_title(value: str) -> str:
    """The significant part of an AE title, or PeerError("invalid") naming the rule broken."""
    if not isinstance(value, str):
        raise _invalid("an AE title is a string")
    bad = [c for c in value if c == "\\" or not (" " <= c <= "~")]
    if bad:
        raise _invalid(f"AE title {value!r} has a character VR AE does not allow "
                       f"({bad[0]!r}; PS3.5 6.2: no backslash, no control characters)")
    title = value.strip(" ")
    if not title:
        raise _invalid("an AE title needs at least one character that is not a space")
    if len(title) > AE_TITLE_MAX:
        raise _invalid(f"AE title {title!r} is {len(title)} characters; "
                       f"at most {AE_TITLE_MAX} (PS3.5 6.2)")
    return title


def normalise_host(value: str | None) -> str:
    """'' (any address), an IP address, an IP network (CIDR) or a host name."""
    host = (value or "").strip()
    if not host:
        return ""
    if len(host) > HOST_MAX:
        raise _invalid(f"host is {len(host)} characters; at most {HOST_MAX}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if "/" in host:
        try:
            return str(ipaddress.ip_network(host, strict=False))
        except ValueError as exc:
            raise _invalid(f"host {host!r} is not an IP network: {exc}") from exc
    if not _HOSTNAME.match(host):
        raise _invalid(f"host {host!r} is not an IP address, an IP network or a host name")
    return host.lower()


def normalise_port(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _invalid(f"port {value!r} is not a TCP port (1-65535)")
    return value


def normalise_description(value: str | None) -> str:
    text = (value or "").strip()
    if len(text) > DESCRIPTION_MAX:
        raise _invalid(f"description is {len(text)} characters; at most {DESCRIPTION_MAX}")
    return text


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "host":
            out[name] = normalise_host(value)
        elif name == "port":
            out[name] = normalise_port(value)
        elif name == "description":
            out[name] = normalise_description(value)
        elif name in RIGHTS:
            if not isinstance(value, bool):
                raise _invalid(f"{name} is true or false, not {value!r}")
            out[name] = value
        else:
            raise _invalid(f"unknown peer field {name!r}; fields are {', '.join(EDITABLE)}")
    return out


# ---------------------------------------------------------------- the service

def to_dict(peer: DicomPeer) -> dict[str, Any]:
    return {"ae_title": peer.ae_title, "host": peer.host, "port": peer.port,
            "can_store": peer.can_store, "can_query": peer.can_query,
            "can_retrieve": peer.can_retrieve, "description": peer.description,
            "created_at": peer.created_at.isoformat() if peer.created_at else None,
            "updated_at": peer.updated_at.isoformat() if peer.updated_at else None}


def _detail(peer: DicomPeer) -> dict[str, Any]:
    return {k: v for k, v in to_dict(peer).items() if k in ("ae_title", *EDITABLE)}


def list_peers(session: Session) -> list[DicomPeer]:
    return list(session.scalars(select(DicomPeer).order_by(DicomPeer.ae_title)))


def find(session: Session, ae_title: str) -> DicomPeer | None:
    """The row of an AE title (leading/trailing spaces ignored), or None."""
    title = ae_title.strip(" ") if isinstance(ae_title, str) else ""
    if not title:
        return None
    return session.scalar(select(DicomPeer).where(DicomPeer.ae_title == title))


def get(session: Session, ae_title: str) -> DicomPeer:
    peer = find(session, ae_title)
    if peer is None:
        raise PeerError("not-found", f"no DICOM peer with AE title {ae_title.strip()!r}")
    return peer


def create(session: Session, ae_title: str, actor: str = "cli", *, host: str = "",
           port: int | None = None, can_store: bool = False, can_query: bool = False,
           can_retrieve: bool = False, description: str = "") -> DicomPeer:
    title = normalise_ae_title(ae_title)
    fields = _clean({"host": host, "port": port, "can_store": can_store,
                     "can_query": can_query, "can_retrieve": can_retrieve,
                     "description": description})
    if find(session, title) is not None:
        raise PeerError("exists", f"a DICOM peer with AE title {title!r} already exists")
    now = utcnow()
    peer = DicomPeer(ae_title=title, created_at=now, updated_at=now, **fields)
    session.add(peer)
    try:
        session.flush()
    except IntegrityError as exc:  # created by someone else since the check above
        session.rollback()
        raise PeerError("exists", f"a DICOM peer with AE title {title!r} already exists") from exc
    audit.record(session, actor, "peer.create", "dicom_peer", title, detail=_detail(peer))
    return peer


def update(session: Session, ae_title: str, actor: str = "cli", **changes: Any) -> DicomPeer:
    """Change some of host, port, rights and description; the audit names old and new."""
    peer = get(session, ae_title)
    fields = _clean(changes)
    changed = {k: [getattr(peer, k), v] for k, v in fields.items() if getattr(peer, k) != v}
    for name, (_, new) in changed.items():
        setattr(peer, name, new)
    if changed:
        peer.updated_at = utcnow()
        session.flush()
    audit.record(session, actor, "peer.update", "dicom_peer", peer.ae_title,
                 detail={"changed": changed})
    return peer


def delete(session: Session, ae_title: str, actor: str = "cli") -> dict[str, Any]:
    peer = get(session, ae_title)
    gone = _detail(peer)
    session.delete(peer)
    session.flush()
    audit.record(session, actor, "peer.delete", "dicom_peer", gone["ae_title"], detail=gone)
    return gone


# ---------------------------------------------------------------- the SCP's question

@dataclass(frozen=True)
class Decision:
    """The answer to "may this AE, from this address, do this?" and why not."""

    allowed: bool
    reason: str = ""
    peer: dict[str, Any] | None = None  # the row as a dict (no session needed later)
    known: bool = False                 # False: no row (refused, or let in by accept-any)

    def may(self, action: str) -> bool:
        """Whether the peer this decision was made for may also do ``action``."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if self.peer is None or not self.allowed:
            return False
        return action == "associate" or bool(self.peer.get(f"can_{action}"))


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:a.b.c.d from a dual-stack socket
    return mapped or ip


def host_matches(host: str, address: str) -> bool:
    """Whether a connection from ``address`` comes from the peer's ``host``."""
    if not host:
        return True
    ip = _ip(address)
    if ip is None:
        return False
    if "/" in host:
        try:
            return ip in ipaddress.ip_network(host, strict=False)
        except ValueError:
            return False
    if _ip(host) is not None:
        return ip == _ip(host)
    try:  # a host name: any of the addresses it resolves to
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return any(_ip(str(info[4][0])) == ip for info in infos)


def authorise(session: Session, ae_title: str, address: str, action: str = "associate",
              accept_any: bool = False) -> Decision:
    """May ``ae_title`` connecting from ``address`` do ``action``?

    One SELECT by the unique AE title. An unknown AE title is refused, unless ``accept_any``
    (MEDGATE_DICOM_ACCEPT_ANY_PEER) grants it store and query rights; a known peer keeps its
    own host and rights either way."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    peer = find(session, ae_title)
    if peer is None:
        if accept_any:
            granted = {"ae_title": ae_title.strip(), "host": "", "port": None,
                       "can_store": True, "can_query": True, "can_retrieve": False}
            decision = Decision(True, "any peer accepted (MEDGATE_DICOM_ACCEPT_ANY_PEER)",
                                granted)
            return decision if decision.may(action) else Decision(
                False, f"{action} is not granted to unknown peers", granted)
        return Decision(False, f"calling AE title {ae_title.strip()!r} is not a known peer")
    row = to_dict(peer)
    if not host_matches(peer.host, address):
        return Decision(False, f"peer {peer.ae_title!r} is registered for host {peer.host!r}, "
                        f"not {address}", row, known=True)
    decision = Decision(True, "", row, known=True)
    if not decision.may(action):
        return Decision(False, f"peer {peer.ae_title!r} may not {action}", row, known=True)
    return decision


__all__ = ["PeerError", "Decision", "authorise", "create", "update", "delete", "get", "find",
           "list_peers", "to_dict", "host_matches", "normalise_ae_title"]
