"""Engines kept for a worker's lifetime.

A worker builds an engine once per (family, version, weights digest, device, dtype) and reuses
it for every study: ``build`` checks the spec, ``load()`` reads weights once, ``run()`` per
study. Before the first load the registered manifest is verified file by file; after that a
cheap stat fingerprint (size, mtime, inode of every file) is compared on each use, so weights
changed on disk under a running worker are hashed again and refused by name instead of being
used. Each family keeps one engine, or the ones its caller still needs (the active version and
a shadow beside it): building another version drops the rest, so activating a version frees the
memory (GPU memory included) of the one it replaces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.base import Engine, ModelSpec, build, load_engine
from models.runtime.manifest import Manifest, stat_fingerprint, verify_manifest

Key = tuple[str, str, str, str, str]
OnLoad = Callable[[ModelSpec, float], None]


def engine_key(spec: ModelSpec) -> Key:
    return (spec.family, spec.version, spec.sha256 or "", spec.device, spec.dtype or "")


@dataclass
class _Entry:
    key: Key
    engine: Engine
    fingerprint: Any
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    uses: int = 0


class EngineCache:
    """Engines by family, rebuilt when the version, weights, device or dtype change. A family
    holds one engine, or as many as the caller keeps (the active version and a shadow)."""

    def __init__(self, on_load: OnLoad | None = None) -> None:
        self._entries: dict[str, list[_Entry]] = {}
        self._lock = threading.Lock()
        self.on_load = on_load
        self.builds: dict[Key, int] = {}

    def get(self, spec: ModelSpec, manifest: Manifest | None = None,
            keep: frozenset[Key] = frozenset()) -> Engine:
        """The engine for ``spec``, built and loaded on first use. With a manifest, the weights
        at ``spec.weights_path`` are verified before loading (a ManifestError names the file).
        Other engines of the family are dropped unless their key is in ``keep``."""
        return self.get_loaded(spec, manifest, keep)[0]

    def get_loaded(self, spec: ModelSpec, manifest: Manifest | None = None,
                   keep: frozenset[Key] = frozenset()) -> tuple[Engine, float | None]:
        """``get``, and the seconds it spent loading (None when the engine was held)."""
        with self._lock:
            key = engine_key(spec)
            weights = Path(spec.weights_path) if spec.weights_path else None
            held = self._entries.get(spec.family, [])
            # drop our references to engines no longer wanted, so their memory can go
            held = [e for e in held if e.key == key or e.key in keep]
            entry = next((e for e in held if e.key == key), None)
            if entry is not None:
                if manifest is None or weights is None or (
                        stat_fingerprint(weights, manifest) == entry.fingerprint):
                    entry.uses += 1
                    self._entries[spec.family] = held
                    return entry.engine, None
                held.remove(entry)  # changed on disk: verify and load again
            self._entries[spec.family] = held
            entry = None
            fingerprint = None
            if manifest is not None and weights is not None:
                verify_manifest(weights, manifest)
                fingerprint = stat_fingerprint(weights, manifest)
            started = time.perf_counter()
            engine = load_engine(build(spec))
            seconds = time.perf_counter() - started
            held.append(_Entry(key, engine, fingerprint, seconds, uses=1))
            self.builds[key] = self.builds.get(key, 0) + 1
        if self.on_load is not None:
            self.on_load(spec, seconds)
        return engine, seconds

    def discard(self, spec: ModelSpec) -> None:
        """Forget the engine of ``spec`` (one that timed out may still be running)."""
        with self._lock:
            key = engine_key(spec)
            held = self._entries.get(spec.family, [])
            self._entries[spec.family] = [e for e in held if e.key != key]

    def drop(self, family: str | None = None) -> None:
        with self._lock:
            if family is None:
                self._entries.clear()
            else:
                self._entries.pop(family, None)

    def loaded(self) -> list[dict[str, Any]]:
        """What this process holds: for /metrics-style introspection and tests."""
        with self._lock:
            return [{"family": e.key[0], "version": e.key[1], "sha256": e.key[2] or None,
                     "device": e.key[3], "dtype": e.key[4] or None,
                     "load_seconds": round(e.load_seconds, 4), "uses": e.uses}
                    for entries in self._entries.values() for e in entries]
