"""The manifest of a checkpoint: every weights file with its size and sha256.

A checkpoint is registered with its manifest and verified against it before any engine is built,
so a file swapped, truncated, added or removed on disk is refused with its name. This module
imports no torch: the platform verifies without loading a model.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from models.base import ContractError

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Names listed in a message before "and N more": enough to act on, short enough to read.
_LISTED = 5

Progress = Callable[[str, int, int], None]


class ManifestError(ContractError):
    """A checkpoint that does not match its manifest, or a malformed manifest."""


@dataclass(frozen=True)
class ManifestFile:
    path: str  # POSIX, relative to the checkpoint root; the file name for a single file
    size: int
    sha256: str

    def __post_init__(self) -> None:
        p = PurePosixPath(self.path)
        if (not self.path or "\\" in self.path or p.is_absolute()
                or any(part in ("", ".", "..") for part in self.path.split("/"))):
            raise ManifestError(f"manifest entry {self.path!r} is not a relative POSIX path "
                                "inside the checkpoint")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ManifestError(f"manifest entry {self.path}: size {self.size!r} is not a "
                                "byte count")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256.lower()):
            raise ManifestError(f"manifest entry {self.path}: sha256 {self.sha256!r} is not 64 "
                                "hex digits")
        # stored lowercase, as hashlib writes it, so comparisons are plain string equality
        object.__setattr__(self, "sha256", self.sha256.lower())

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    kind: Literal["file", "folder"]
    files: tuple[ManifestFile, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("file", "folder"):
            raise ManifestError(f"manifest kind must be 'file' or 'folder', not {self.kind!r}")
        if not self.files:
            raise ManifestError("a manifest lists at least one weights file")
        paths = [f.path for f in self.files]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ManifestError(f"manifest lists {', '.join(dupes)} more than once")
        if self.kind == "file" and (len(self.files) != 1 or "/" in self.files[0].path):
            raise ManifestError("a single-file manifest lists exactly one file name, not "
                                f"{', '.join(paths)}")

    @property
    def digest(self) -> str:
        """One sha256 for the whole checkpoint. For a single file it is the file's own sha256
        (what ``models.base.sha256_file`` gives), so registrations made before manifests keep
        their digest."""
        if self.kind == "file":
            return self.files[0].sha256
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f"{f.path}\t{f.size}\t{f.sha256}\n".encode())
        return h.hexdigest()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "digest": self.digest,
                "files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict):
            raise ManifestError(f"a manifest is a mapping, not {type(d).__name__}")
        files = d.get("files")
        if not isinstance(files, list):
            raise ManifestError("manifest 'files' must be a list of {path, size, sha256}")
        entries = []
        for i, f in enumerate(files):
            if not isinstance(f, dict) or set(f) != {"path", "size", "sha256"}:
                raise ManifestError(f"manifest file entry {i} ({f!r}) must have exactly path, "
                                    "size and sha256")
            if not isinstance(f["path"], str):
                raise ManifestError(f"manifest file entry {i}: path {f['path']!r} is not a "
                                    "string")
            entries.append(ManifestFile(f["path"], f["size"], f["sha256"]))
        m = cls(d.get("kind"), tuple(entries))  # type: ignore[arg-type]
        if "digest" in d and d["digest"] != m.digest:
            raise ManifestError(f"manifest digest {d['digest']!r} does not match its files "
                                f"(they give {m.digest})")
        return m


def _walk(path: Path) -> tuple[Literal["file", "folder"], list[tuple[str, Path]]]:
    """(kind, [(relative POSIX path, file)]) in sorted order, hidden files and folders left
    out (``.git``, ``.cache`` of a hub download, editor droppings are not weights)."""
    if path.is_file():
        return "file", [(path.name, path)]
    if not path.is_dir():
        raise ManifestError(f"checkpoint {path} does not exist")
    found: list[tuple[str, Path]] = []
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        found.append((rel.as_posix(), p))
    found.sort(key=lambda t: t[0])
    return "folder", found


def _hash(file: Path, done: int, total: int, name: str, progress: Progress | None) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(name, done, total)
    return h.hexdigest()


def compute_manifest(path: str | Path, progress: Progress | None = None) -> Manifest:
    """The manifest of a weights file or of a checkpoint folder (walked recursively).

    ``progress(file_name, bytes_done, bytes_total)`` is called after each 1 MiB read; the byte
    counts are over the whole checkpoint, so a caller can show one bar.
    """
    path = Path(path)
    kind, found = _walk(path)
    if not found:
        raise ManifestError(f"checkpoint folder {path} holds no files (hidden ones are not "
                            "counted)")
    sizes = [f.stat().st_size for _, f in found]
    total, done = sum(sizes), 0
    entries = []
    for (rel, f), size in zip(found, sizes, strict=True):
        entries.append(ManifestFile(rel, size, _hash(f, done, total, rel, progress)))
        done += size
    return Manifest(kind, tuple(entries))


def _names(rels: list[str]) -> str:
    more = f" and {len(rels) - _LISTED} more" if len(rels) > _LISTED else ""
    return ", ".join(rels[:_LISTED]) + more


def _short(digest: str) -> str:
    return digest[:12] + "…"


def verify_manifest(path: str | Path, manifest: Manifest) -> None:
    """Refuse a checkpoint that differs from its registered manifest, naming the file.

    Everything a stat can tell (a file missing, added, resized) is checked for all files before
    any byte is hashed, so a wrong checkpoint of many gigabytes fails at once.
    """
    path = Path(path)
    where = path.parent if manifest.kind == "file" else path
    registered = {f.path: f for f in manifest.files}
    if manifest.kind == "file":
        if path.is_dir():
            raise ManifestError(f"{path} is a folder; it was registered as the single weights "
                                f"file {manifest.files[0].path}")
        on_disk = {manifest.files[0].path: path} if path.is_file() else {}
    else:
        if path.is_file():
            raise ManifestError(f"{path} is a file; it was registered as a checkpoint folder")
        on_disk = dict(_walk(path)[1]) if path.is_dir() else {}

    missing = [r for r in registered if r not in on_disk]
    if missing:
        first = registered[missing[0]]
        also = f"; also missing: {_names(missing[1:])}" if len(missing) > 1 else ""
        raise ManifestError(f"weights file {first.path} is missing from {where} (registered "
                            f"with {first.size} bytes){also}")
    extra = [r for r in on_disk if r not in registered]
    if extra:
        raise ManifestError(f"weights file {_names(extra)} is not in the registered manifest "
                            f"of {where}; refusing to load")
    sizes = {r: on_disk[r].stat().st_size for r in registered}
    for r, f in registered.items():
        if sizes[r] != f.size:
            raise ManifestError(f"weights file {r} changed since registration: {sizes[r]} bytes, "
                                f"registered {f.size}; refusing to load")
    total, done = manifest.total_size, 0
    for r, f in registered.items():
        digest = _hash(on_disk[r], done, total, r, None)
        if digest != f.sha256:
            raise ManifestError(f"weights file {r} changed since registration: sha256 "
                                f"{_short(digest)} registered {_short(f.sha256)}; refusing to "
                                "load")
        done += f.size


def _stat(file: Path) -> os.stat_result | None:
    try:
        return file.stat()
    except FileNotFoundError:
        return None


def stat_fingerprint(path: str | Path, manifest: Manifest) -> tuple[Any, ...]:
    """A cheap fingerprint of the checkpoint on disk, to compare for equality between jobs.

    Per registered file (relative path, size, st_mtime_ns, st_ino), or (relative path, None)
    when it is missing; for a folder, the files present that the manifest does not list come
    last. A replaced file changes size, mtime or inode without any byte being hashed.
    """
    path = Path(path)
    if manifest.kind == "file":
        files: Iterator[tuple[str, Path]] = iter([(manifest.files[0].path, path)])
        extra: tuple[str, ...] = ()
    else:
        files = ((f.path, path / f.path) for f in manifest.files)
        listed = {f.path for f in manifest.files}
        present = _walk(path)[1] if path.is_dir() else []
        extra = tuple(r for r, _ in present if r not in listed)
    out: list[Any] = []
    for rel, file in files:
        st = _stat(file)
        out.append((rel, None) if st is None else (rel, st.st_size, st.st_mtime_ns, st.st_ino))
    out.append(extra)
    return tuple(out)
