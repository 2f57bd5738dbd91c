"""Model versions: register weights (a file or a folder, with the manifest of every file's size
and sha256), list them, and resolve what a job runs: for a family and a routing rule, the
version assigned to that rule, else the one assigned to every rule, else the family's built-in
default; and the shadow version beside it, if any.

What changes a version's status (validate, shadow, activate, roll back, retire, quarantine)
lives in ``app.registry.lifecycle``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import ModelAssignment, ModelVersion
from app.registry.defaults import default_spec
from app.security import audit
from models.base import VARIANTS, ContractError, ModelSpec, build
from models.runtime.manifest import (
    Manifest,
    ManifestError,
    ManifestFile,
    compute_manifest,
)

STATUSES = ("registered", "validated", "shadow", "active", "retired", "quarantined")
ROLES = ("active", "shadow")


# What a family's factory raises for a spec it refuses (a bad config, a missing optional
# package, unreadable files): a refusal, never a 500.
BUILD_ERRORS = (ContractError, TypeError, KeyError, ValueError, ImportError, OSError)


class RegistryError(ValueError):
    """A registration or a life-cycle change that cannot be done; the message says why."""

    def __init__(self, message: str, status: int = 422, code: str = "model-refused") -> None:
        super().__init__(message)
        self.status, self.code = status, code


class NotRegistered(RegistryError):
    def __init__(self, family: str, version: str) -> None:
        super().__init__(f"{family} {version} is not registered", 404, "not-found")


def weights_location(path: str) -> Path:
    """A weights path as registered: absolute, or relative to MEDGATE_MODEL_DIR."""
    p = Path(path)
    return p if p.is_absolute() else get_settings().models_dir / p


def register(session: Session, family: str, version: str, variant: str = "checkpoint",
             weights_path: str | None = None, config: dict[str, Any] | None = None,
             actor: str = "cli", notes: str = "") -> ModelVersion:
    """Record a version and its manifest. The family's factory checks the spec and config
    (cheap: no weights are read), so a config the family rejects is refused here."""
    from app.pipeline.families import known_families

    if family not in known_families():
        raise RegistryError(f"unknown model family {family!r}; known: {sorted(known_families())}",
                            code="unknown-family")
    if variant not in VARIANTS:
        raise RegistryError(f"variant must be one of {VARIANTS}")
    if not isinstance(version, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}",
                                                        version):
        # it is a path segment of the admin API (/models/{family}/{version})
        raise RegistryError("version must be 1 to 64 letters, digits or . _ + - (starting with "
                            "a letter or digit)")
    if config is not None and not isinstance(config, dict):
        raise RegistryError("config must be a JSON object")
    if session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                 ModelVersion.version == version)):
        raise RegistryError(f"{family} {version} is already registered", 409,
                            "duplicate-version")
    manifest: Manifest | None = None
    full: Path | None = None
    if weights_path:
        # lexically, so a weights folder mounted by a symbolic link into the folder is fine
        root = Path(os.path.abspath(get_settings().models_dir))
        full = Path(os.path.normpath(root / weights_path))
        if full == root or root not in full.parents:
            raise RegistryError(f"weights path {weights_path!r} must lie inside the model "
                                "folder (MEDGATE_MODEL_DIR), given relative to it",
                                code="missing-weights")
        if not full.exists():
            raise RegistryError(f"weights {weights_path} do not exist under the model folder "
                                f"({full})", code="missing-weights")
        try:
            manifest = compute_manifest(full)
        except ManifestError as exc:
            raise RegistryError(str(exc), code="missing-weights") from exc
    elif variant == "checkpoint":
        raise RegistryError("a checkpoint version needs a weights file or folder",
                            code="missing-weights")
    try:
        build(ModelSpec(family=family, version=version, variant=variant,  # type: ignore[arg-type]
                        weights_path=str(full) if full else None, config=config or {}))
    except BUILD_ERRORS as exc:
        raise RegistryError(f"{family} refuses this version: {exc}", code="invalid-config") \
            from exc
    row = ModelVersion(family=family, version=version, variant=variant,
                       weights_path=weights_path, sha256=manifest.digest if manifest else None,
                       manifest=manifest.to_dict() if manifest else None, status="registered",
                       config=config or {}, notes=notes or "", registered_by=actor)
    try:
        with session.begin_nested():  # a concurrent registration of the same version loses
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise RegistryError(f"{family} {version} is already registered", 409,
                            "duplicate-version") from exc
    audit.record(session, actor, "model.register", "model_version", f"{family}@{version}",
                 detail={"sha256": row.sha256, "variant": variant,
                         "files": len(manifest.files) if manifest else 0})
    return row


def get_version(session: Session, family: str, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                    ModelVersion.version == version))
    if row is None:
        raise NotRegistered(family, version)
    return row


def manifest_of(row: ModelVersion) -> Manifest | None:
    """The registered manifest. A version registered before manifests existed (one file and its
    sha256) gets a one-file manifest whose size is the file's own, so its sha256 decides."""
    if row.manifest:
        return Manifest.from_dict(row.manifest)
    if row.weights_path and row.sha256:
        full = weights_location(row.weights_path)
        size = full.stat().st_size if full.is_file() else 0
        return Manifest("file", (ManifestFile(full.name, size, row.sha256),))
    return None


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.family,
                                                              ModelVersion.id)))


def spec_of(row: ModelVersion, device: str = "cpu", dtype: str | None = None) -> ModelSpec:
    weights = str(weights_location(row.weights_path)) if row.weights_path else None
    return ModelSpec(family=row.family, version=row.version, variant=row.variant,  # type: ignore[arg-type]
                     weights_path=weights, sha256=row.sha256, config=row.config or {},
                     device=device, dtype=dtype)


@dataclass(frozen=True)
class Resolved:
    """What a worker needs to build one family's engine: the spec, the manifest to verify, the
    registered version's row id (None for a built-in default) and the rule of its assignment
    ("" when assigned to every rule or not assigned)."""

    spec: ModelSpec
    manifest: Manifest | None
    version_id: int | None = None
    rule: str = ""


def open_assignments(session: Session, family: str, role: str,
                     rule: str | None = None) -> list[ModelAssignment]:
    """The family's current assignments in ``role``: all of them, or those for ``rule`` and
    for every rule, the rule's own first."""
    q = select(ModelAssignment).where(ModelAssignment.family == family,
                                      ModelAssignment.role == role,
                                      ModelAssignment.ended_at.is_(None))
    if rule is not None:
        q = q.where(ModelAssignment.rule.in_({rule, ""}))
    rows = list(session.scalars(q.order_by(ModelAssignment.id)))
    return sorted(rows, key=lambda a: a.rule == "")


def assigned(session: Session, family: str, role: str, rule: str
             ) -> tuple[ModelAssignment | None, ModelVersion | None]:
    """The assignment that decides ``role`` for ``family`` on ``rule``, and its version (None
    for the built-in default)."""
    for a in open_assignments(session, family, role, rule):
        row = session.get(ModelVersion, a.version_fk) if a.version_fk else None
        if row is not None and row.status in ("retired", "quarantined"):
            continue  # ended when it was set; never run whatever the rows say
        return a, row
    return None, None


def resolve(session: Session, family: str, device: str = "cpu", dtype: str | None = None,
            rule: str = "") -> Resolved:
    """The version a job of ``rule`` runs for ``family``: the rule's own active version, else
    the one active on every rule, else the built-in default."""
    assignment, row = assigned(session, family, "active", rule)
    if row is None:
        return Resolved(replace(default_spec(family), device=device, dtype=dtype), None)
    return Resolved(spec_of(row, device, dtype), manifest_of(row), row.id, assignment.rule)


def resolve_shadow(session: Session, family: str, device: str = "cpu",
                   dtype: str | None = None, rule: str = "") -> Resolved | None:
    """The version shadowing ``family`` on ``rule``, or None."""
    assignment, row = assigned(session, family, "shadow", rule)
    if row is None:
        return None
    return Resolved(spec_of(row, device, dtype), manifest_of(row), row.id, assignment.rule)


def resolve_spec(session: Session, family: str) -> ModelSpec:
    return resolve(session, family).spec
