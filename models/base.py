"""The engine contract shared by every model family.

An engine is one model family at one version. It receives plain inputs (file paths, metadata,
arrays) and returns an ``EngineResult``. This package never imports ``app``: a family can be tested,
benchmarked and run from the CLI without a server.

The result types validate on construction (as highdicom's objects do), so an invalid finding or
measurement cannot exist in memory.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

DOMAINS = ("cxr", "ct", "ecg", "pathology")
TASKS = ("report", "classify", "measure", "ground", "segment", "vqa", "compare")
FINDING_STATES = ("present", "absent", "uncertain")
VARIANTS = ("reference", "checkpoint", "builtin")


class ContractError(ValueError):
    """An engine input or result that breaks the contract."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ContractError(message)


@dataclass(frozen=True)
class Where:
    """Where a measurement or finding was taken, so a viewer can show it."""

    lead: str | None = None
    beats: tuple[int, ...] = ()
    instance_uid: str | None = None
    frame: int | None = None
    slice_index: int | None = None
    region_id: str | None = None
    start_s: float | None = None
    end_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v not in (None, ())}


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float
    unit: str
    code: str | None = None
    where: Where = field(default_factory=Where)
    id: str = ""

    def __post_init__(self) -> None:
        _require(bool(self.name), "measurement needs a name")
        _require(isinstance(self.value, (int, float)) and math.isfinite(self.value),
                 f"measurement {self.name!r} has a non-finite value {self.value!r}")
        _require(bool(self.unit), f"measurement {self.name!r} needs a unit")
        if not self.id:
            lead = f":{self.where.lead}" if self.where.lead else ""
            object.__setattr__(self, "id", f"m:{self.name}{lead}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "value": self.value, "unit": self.unit,
                "code": self.code, "where": self.where.to_dict()}


@dataclass(frozen=True)
class Region:
    """A box (x, y, width, height) or a mask file, in pixel coordinates of one instance/frame."""

    id: str
    instance_uid: str | None = None
    frame: int | None = None
    box: tuple[float, float, float, float] | None = None
    mask_path: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        _require(bool(self.id), "region needs an id")
        _require(self.box is not None or self.mask_path is not None,
                 f"region {self.id!r} needs a box or a mask")
        if self.box is not None:
            _require(len(self.box) == 4 and self.box[2] >= 0 and self.box[3] >= 0,
                     f"region {self.id!r} box must be (x, y, width, height), sizes >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "instance_uid": self.instance_uid, "frame": self.frame,
                "box": list(self.box) if self.box else None, "mask_path": self.mask_path,
                "label": self.label}


@dataclass(frozen=True)
class Finding:
    """A statement about the study. ``evidence`` lists measurement and region ids behind it;
    ``knowledge`` lists knowledge-base entry ids that define it."""

    code: str
    label: str
    state: Literal["present", "absent", "uncertain"] = "present"
    score: float | None = None
    evidence: tuple[str, ...] = ()
    knowledge: tuple[str, ...] = ()
    where: Where = field(default_factory=Where)
    criteria: str = ""
    # False for a normal or descriptive statement (sinus rhythm, normal axis); None: unknown.
    abnormal: bool | None = None

    def __post_init__(self) -> None:
        _require(bool(self.code) and bool(self.label), "finding needs a code and a label")
        _require(self.state in FINDING_STATES,
                 f"finding state must be one of {FINDING_STATES}, not {self.state!r}")
        if self.score is not None:
            _require(math.isfinite(self.score), f"finding {self.code!r} has a non-finite score")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "label": self.label, "state": self.state, "score": self.score,
                "evidence": list(self.evidence), "knowledge": list(self.knowledge),
                "where": self.where.to_dict(), "criteria": self.criteria,
                "abnormal": self.abnormal}


@dataclass(frozen=True)
class ModelInfo:
    family: str
    version: str
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EngineResult:
    model: ModelInfo
    trained: bool
    findings: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [m.id for m in self.measurements] + [r.id for r in self.regions]
        _require(len(ids) == len(set(ids)), "measurement and region ids must be unique in a result")
        known = set(ids)
        for f in self.findings:
            missing = [e for e in f.evidence if e not in known]
            _require(not missing, f"finding {f.code!r} cites unknown evidence {missing}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "trained": self.trained,
                "findings": [f.to_dict() for f in self.findings],
                "measurements": [m.to_dict() for m in self.measurements],
                "regions": [r.to_dict() for r in self.regions],
                "text": dict(self.text), "warnings": list(self.warnings), "raw": self.raw}


@dataclass
class StudyInput:
    """What an engine sees of a study: files, metadata (one dict per instance, DICOM keywords),
    the prior of the same patient and domain, and an optional interactive prompt."""

    domain: str
    paths: list[Path]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    study_uid: str | None = None
    prior: StudyInput | None = None
    prompt: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _require(self.domain in DOMAINS, f"domain must be one of {DOMAINS}, not {self.domain!r}")
        self.paths = [Path(p) for p in self.paths]
        _require(bool(self.paths), "a study input needs at least one file")


@dataclass(frozen=True)
class ModelSpec:
    family: str
    version: str
    variant: Literal["reference", "checkpoint", "builtin"] = "builtin"
    weights_path: str | None = None
    sha256: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.variant in VARIANTS, f"variant must be one of {VARIANTS}")
        if self.variant == "checkpoint":
            _require(bool(self.weights_path), "a checkpoint spec needs a weights path")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@runtime_checkable
class Engine(Protocol):
    family: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    domains: ClassVar[tuple[str, ...]]

    def run(self, study: StudyInput) -> EngineResult: ...


Factory = Callable[[ModelSpec], Engine]
# family name -> factory(spec) -> Engine
_REGISTRY: dict[str, Factory] = {}


def register(family: str) -> Callable[[Factory], Factory]:
    def deco(factory: Factory) -> Factory:
        _REGISTRY[family] = factory
        return factory
    return deco


def families() -> list[str]:
    _load_builtin_families()
    return sorted(_REGISTRY)


def build(spec: ModelSpec) -> Engine:
    _load_builtin_families()
    if spec.family not in _REGISTRY:
        raise ContractError(f"unknown model family {spec.family!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[spec.family](spec)


def _load_builtin_families() -> None:
    # Importing a family package registers it; import lazily so `models.base` stays light.
    import importlib

    for mod in ("models.technical", "models.ecg"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a family not built yet
            if exc.name != mod:
                raise
