"""Model versions: register weights (with their checksum), activate one version per family,
list. The pipeline runs a family's active version, else its built-in default.

Statuses: registered → active → retired (activating a version retires the family's previous
active one, so rolling back is activating the older version again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import ModelVersion
from app.security import audit
from models.base import VARIANTS, families, sha256_file

STATUSES = ("registered", "active", "retired")


class RegistryError(ValueError):
    """A registration or activation that cannot be done."""


def _weights(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else get_settings().models_dir / p


def register(session: Session, family: str, version: str, variant: str = "checkpoint",
             weights_path: str | None = None, config: dict[str, Any] | None = None,
             actor: str = "cli") -> ModelVersion:
    if family not in families():
        raise RegistryError(f"unknown model family {family!r}; known: {families()}")
    if variant not in VARIANTS:
        raise RegistryError(f"variant must be one of {VARIANTS}")
    sha = None
    if weights_path:
        full = _weights(weights_path)
        if not full.is_file():
            raise RegistryError(f"weights file {full} does not exist")
        sha = sha256_file(full)
    elif variant == "checkpoint":
        raise RegistryError("a checkpoint version needs a weights file")
    if session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                 ModelVersion.version == version)):
        raise RegistryError(f"{family} {version} is already registered")
    row = ModelVersion(family=family, version=version, variant=variant,
                       weights_path=weights_path, sha256=sha, status="registered",
                       config=config or {})
    session.add(row)
    session.flush()
    audit.record(session, actor, "model.register", "model_version", f"{family}@{version}",
                 detail={"sha256": sha, "variant": variant})
    return row


def activate(session: Session, family: str, version: str, actor: str = "cli") -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.family == family,
                                                    ModelVersion.version == version))
    if row is None:
        raise RegistryError(f"{family} {version} is not registered")
    if row.weights_path and row.sha256 and sha256_file(_weights(row.weights_path)) != row.sha256:
        raise RegistryError(f"the weights of {family} {version} changed since registration")
    for other in session.scalars(select(ModelVersion).where(ModelVersion.family == family,
                                                            ModelVersion.status == "active")):
        other.status = "retired"
    row.status = "active"
    audit.record(session, actor, "model.activate", "model_version", f"{family}@{version}")
    return row


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.family,
                                                              ModelVersion.id)))
