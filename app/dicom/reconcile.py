"""Store and database agree after a crash.

A crash (``kill -9``, power loss) can stop a store between its steps: spooled temporary files,
files already renamed into their final path whose transaction never committed. The rule
(``docs/dicomweb.md``, "After a crash"):

- temporary files of writers that are gone are removed (a live writer's are left alone);
- a file in a final path without a row is indexed through the ordinary store path when it is
  whole and valid (the sender got no answer for it and will send it again; the duplicate rule
  then makes that a no-op); anything else goes to ``<data dir>/quarantine/`` with a log line and
  ``medgate_store_quarantined_total``, never deleted;
- a row whose file is missing is reported, never dropped: a person decides.

Files younger than ``min_age`` seconds are left for a later pass, since another process may be
between its rename and its commit. ``medgate serve`` runs a pass at start-up and one more a
little later; ``medgate store check [--repair]`` runs one on demand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from app import metrics
from app.config import get_settings
from app.db.models import Instance, utcnow
from app.dicom import store

log = logging.getLogger("medgate.reconcile")


@dataclass
class Reconciled:
    removed_tmp: list[str] = field(default_factory=list)
    indexed: list[str] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # found, not repaired (no --repair)
    stale_tmp: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.stale_tmp or self.missing)

    def to_dict(self) -> dict:
        return {"removed_tmp": len(self.removed_tmp), "indexed": self.indexed,
                "quarantined": [{"path": p, "reason": r} for p, r in self.quarantined],
                "orphans": self.orphans, "stale_tmp": len(self.stale_tmp),
                "missing": self.missing}


def _writer_gone(name: str) -> bool:
    """A spool file ``in-<host>-<pid>-…`` of this host whose process no longer runs."""
    parts = name.split("-")
    if len(parts) < 4 or parts[0] != "in" or not parts[2].isdigit():
        return True  # not a name a live writer uses
    host, pid = parts[1], int(parts[2])
    if host != store.WRITER.split("-")[0]:
        return False  # another host's: it cleans its own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _quarantine(path: Path, rel: str, reason: str, out: Reconciled) -> None:
    dest = get_settings().data_dir.resolve() / "quarantine" / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}")
    shutil.move(str(path), dest)
    metrics.STORE_QUARANTINED.inc()
    log.warning("quarantined %s: %s", rel, reason)
    out.quarantined.append((rel, reason))


def _index(factory, path: Path, rel: str, out: Reconciled) -> None:
    """Index an orphan through the ordinary store path, from a hard link of it (the store
    consumes its temporary file; the orphan stays put if it is refused)."""
    link = store.tmp_dir() / f"in-{store.WRITER}-reconcile-{uuid.uuid4().hex}.part"
    os.link(path, link)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    try:
        stored = store.store_spooled(factory, link, h.hexdigest(), size, source="reconcile")
    except store.StoreError as exc:
        _quarantine(path, rel, f"refused: {exc.reason}", out)
        return
    finally:
        link.unlink(missing_ok=True)
    if stored.path.resolve() != path.resolve():
        _quarantine(path, rel, f"a copy of {stored.sop_instance_uid}, stored at its own path",
                    out)
        return
    log.info("indexed %s left by an interrupted store", rel)
    out.indexed.append(rel)


def reconcile(factory, repair: bool = True, min_age: float = 30.0) -> Reconciled:
    root = get_settings().store_dir
    now = time.time()
    out = Reconciled()
    tmp = root / "tmp"
    for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if p.is_file() and _writer_gone(p.name):
            if repair:
                p.unlink(missing_ok=True)
                out.removed_tmp.append(p.name)
            else:
                out.stale_tmp.append(p.name)
    with factory() as session:
        known = set(session.scalars(select(Instance.path)))
    seen: set[str] = set()
    for p in sorted(root.rglob("*.dcm")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("tmp/") or not p.is_file():
            continue
        seen.add(rel)
        if rel in known or now - p.stat().st_mtime < min_age:
            continue
        if repair:
            _index(factory, p, rel, out)
        else:
            out.orphans.append(rel)
    out.missing = sorted(known - seen)
    for rel in out.missing:
        log.error("instance file %s is missing from the store; its row is kept", rel)
    if out.removed_tmp or out.indexed or out.quarantined or out.missing:
        log.warning("store reconciled at %s: %d temporary files removed, %d indexed, "
                    "%d quarantined, %d rows without a file", utcnow().isoformat(),
                    len(out.removed_tmp), len(out.indexed), len(out.quarantined),
                    len(out.missing))
    return out
