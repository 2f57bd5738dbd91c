"""Model versions: register weights (a file or a folder, with the manifest of every file's size
and sha256), activate one version per family, list, and resolve what the pipeline runs: a
family's active version, else its built-in default.

Statuses: registered → active → retired (activating a version retires the family's previous
active one, so rolling back is activating the older version again).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import ModelVersion
from app.registry.defaults import default_spec
from app.security import audit
from models.base import VARIANTS, ModelSpec, families
from models.runtime.manifest import (
    Manifest,
    ManifestError,
    ManifestFile,
    compute_manifest,
    verify_manifest,
)

STATUSES = ("registered", "active", "retired")


class RegistryError(ValueError):
    """A registration or activation that cannot be done."""


def weights_location(path: str) -> Path:
    """A weights path as registered: absolute, or relative to MEDGATE_MODEL_DIR."""
    p = Path(path)
    return p if p.is_absolute() else get_settings().models_dir / p


def register(session: Session, family: str, version: str, variant: str = "checkpoint",
             weights_path: str | None = None, config: dict[str, Any] | None = None,
             actor: str = "cli") -> ModelVersion:
    if family not in families():
        raise RegistryError(f"unknown model family {family!r}; known: {families()}")
    if variant not in VARIANTS:
        raise RegistryError(f"variant must be one of {VARIANTS}")
    if session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                 ModelVersion.version == version)):
        raise RegistryError(f"{family} {version} is already registered")
    manifest: Manifest | None = None
    if weights_path:
        full = weights_location(weights_path)
        if not full.exists():
            raise RegistryError(f"weights {full} do not exist")
        try:
            manifest = compute_manifest(full)
        except ManifestError as exc:
            raise RegistryError(str(exc)) from exc
    elif variant == "checkpoint":
        raise RegistryError("a checkpoint version needs a weights file or folder")
    row = ModelVersion(family=family, version=version, variant=variant,
                       weights_path=weights_path, sha256=manifest.digest if manifest else None,
                       manifest=manifest.to_dict() if manifest else None, status="registered",
                       config=config or {})
    session.add(row)
    session.flush()
    audit.record(session, actor, "model.register", "model_version", f"{family}@{version}",
                 detail={"sha256": row.sha256, "variant": variant,
                         "files": len(manifest.files) if manifest else 0})
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


def activate(session: Session, family: str, version: str, actor: str = "cli") -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                    ModelVersion.version == version))
    if row is None:
        raise RegistryError(f"{family} {version} is not registered")
    manifest = manifest_of(row)
    if manifest is not None and row.weights_path:
        try:
            verify_manifest(weights_location(row.weights_path), manifest)
        except ManifestError as exc:
            raise RegistryError(f"the weights of {family} {version} changed since "
                                f"registration: {exc}") from exc
    for other in session.scalars(select(ModelVersion).where(ModelVersion.family == family,
                                                            ModelVersion.status == "active")):
        other.status = "retired"
    row.status = "active"
    audit.record(session, actor, "model.activate", "model_version", f"{family}@{version}")
    return row


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.family,
                                                              ModelVersion.id)))


@dataclass(frozen=True)
class Resolved:
    """What a worker needs to build one family's engine: the spec and the manifest to verify."""

    spec: ModelSpec
    manifest: Manifest | None


def resolve(session: Session, family: str, device: str = "cpu",
            dtype: str | None = None) -> Resolved:
    """The active registered version of a family, else its built-in default."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                    ModelVersion.status == "active"))
    if row is None:
        return Resolved(replace(default_spec(family), device=device, dtype=dtype), None)
    weights = str(weights_location(row.weights_path)) if row.weights_path else None
    spec = ModelSpec(family=row.family, version=row.version, variant=row.variant,  # type: ignore[arg-type]
                     weights_path=weights, sha256=row.sha256, config=row.config or {},
                     device=device, dtype=dtype)
    return Resolved(spec, manifest_of(row))


def resolve_spec(session: Session, family: str) -> ModelSpec:
    return resolve(session, family).spec
