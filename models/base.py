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
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

DOMAINS = ("cxr", "ct", "ecg", "pathology")
TASKS = ("report", "classify", "measure", "ground", "segment", "vqa", "compare")
FINDING_STATES = ("present", "absent", "uncertain")
VARIANTS = ("reference", "checkpoint", "builtin")


class ContractError(ValueError):
    """An engine input or result that breaks the contract."""


class InputError(ContractError):
    """A study an engine cannot analyse: the wrong kind of object, too few leads, unreadable
    pixels. Families raise subclasses of it; the message says what is wrong with the input."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ContractError(message)


# Coding scheme designators as DICOM writes them (PS3.16 8): SNOMED CT, RadLex, LOINC, DICOM's own,
# UCUM; a private scheme starts with "99" (PS3.16 8.2), MedGate's is 99MEDGATE.
SCHEMES = ("SCT", "RADLEX", "LN", "DCM", "UCUM", "99MEDGATE")
OWN_SCHEME = "99MEDGATE"
_SCHEME_ALIASES = {"SNOMED": "SCT", "SNOMEDCT": "SCT", "SNOMED-CT": "SCT", "SCT": "SCT",
                   "RADLEX": "RADLEX", "RID": "RADLEX", "LOINC": "LN", "LN": "LN", "DCM": "DCM",
                   "UCUM": "UCUM", "99MEDGATE": OWN_SCHEME, "MEDGATE": OWN_SCHEME}
# A UCUM unit expression (case-sensitive symbols, no spaces): "ms", "/min", "mV.ms", "[hnsf'U]",
# "mm2", "{ratio}", "1". Words such as "beats per minute" are refused.
_UCUM = re.compile(r"^[A-Za-z0-9.\/\[\]{}%'*^_\-+()]+$")
# Abbreviations that look like units but are not UCUM, with the UCUM code meant.
_NOT_UCUM = {"bpm": "/min", "sec": "s", "secs": "s", "msec": "ms", "degree": "deg",
             "degrees": "deg", "cc": "mL", "hu": "[hnsf'U]", "mmhg": "mm[Hg]"}


@dataclass(frozen=True)
class Code:
    """A coded concept: (scheme, value, meaning), e.g. ("SCT", "60046008", "Pleural effusion")."""

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        _require(isinstance(self.value, str) and bool(self.value.strip()), "a code needs a value")
        _require(isinstance(self.meaning, str) and bool(self.meaning.strip()),
                 f"code {self.value!r} needs a meaning")
        scheme = _SCHEME_ALIASES.get(str(self.scheme).strip().upper().replace(" ", ""))
        _require(scheme is not None,
                 f"coding scheme {self.scheme!r} is not one of {SCHEMES} (or an alias of one)")
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "value", self.value.strip())

    @property
    def key(self) -> str:
        """``scheme:value``: what two codes share when they name the same concept."""
        return f"{self.scheme}:{self.value}"

    @classmethod
    def parse(cls, text: str | Code, meaning: str) -> Code:
        """A code from ``SCHEME:value`` ("LOINC:8867-4", "SNOMED:60046008") or, without a known
        scheme prefix, a value of MedGate's own scheme ("ecg-sinus-rhythm")."""
        if isinstance(text, Code):
            return text
        _require(isinstance(text, str) and bool(text.strip()), "a code needs a value")
        head, sep, tail = text.partition(":")
        if sep and head.strip().upper().replace(" ", "") in _SCHEME_ALIASES and tail.strip():
            return cls(head, tail, meaning)
        return cls(OWN_SCHEME, text, meaning)

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Code:
        return cls(str(data.get("scheme", "")), str(data.get("value", "")),
                   str(data.get("meaning", "")))


def _optional_code(value: Code | str | None, meaning: str) -> Code | None:
    return None if value is None else Code.parse(value, meaning)


@dataclass(frozen=True)
class Where:
    """Where a measurement or finding was taken, so a viewer can show it: a lead and beats of a
    waveform, an instance/frame, a slice range of a series, a region, a time range."""

    lead: str | None = None
    beats: tuple[int, ...] = ()
    instance_uid: str | None = None
    frame: int | None = None
    slice_index: int | None = None
    region_id: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    series_uid: str | None = None
    # first and last slice (0-based, in the series' spatial order), both included
    slices: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.slices is not None:
            _require(len(self.slices) == 2 and 0 <= self.slices[0] <= self.slices[1],
                     f"slice range must be (first, last) with 0 <= first <= last, "
                     f"not {self.slices!r}")
            object.__setattr__(self, "slices", (int(self.slices[0]), int(self.slices[1])))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v not in (None, ())}


@dataclass(frozen=True)
class Measurement:
    """A number with its UCUM unit, its coded concept where one is known, and where it was
    taken. ``code`` may be given as ``SCHEME:value`` text; it is kept as a ``Code``."""

    name: str
    value: float
    unit: str
    code: Code | None = None
    where: Where = field(default_factory=Where)
    id: str = ""

    def __post_init__(self) -> None:
        _require(bool(self.name), "measurement needs a name")
        _require(isinstance(self.value, (int, float)) and math.isfinite(self.value),
                 f"measurement {self.name!r} has a non-finite value {self.value!r}")
        _require(bool(self.unit), f"measurement {self.name!r} needs a unit")
        _require(bool(_UCUM.match(self.unit)),
                 f"measurement {self.name!r}: unit {self.unit!r} is not a UCUM expression")
        ucum = _NOT_UCUM.get(self.unit.lower())
        _require(ucum is None or ucum == self.unit,
                 f"measurement {self.name!r}: unit {self.unit!r} is not UCUM; use {ucum!r}")
        object.__setattr__(self, "code",
                           _optional_code(self.code, self.name.replace("_", " ")))
        if not self.id:
            lead = f":{self.where.lead}" if self.where.lead else ""
            object.__setattr__(self, "id", f"m:{self.name}{lead}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "value": self.value, "unit": self.unit,
                "code": self.code.to_dict() if self.code else None,
                "where": self.where.to_dict()}


REGION_KINDS = ("box", "polygon", "mask", "mask3d", "slide")
SLIDE_UNITS = ("level", "um")  # pixels of a pyramid level, or micrometres of the slide
MASK_SUFFIXES = (".png", ".npz")


@dataclass(frozen=True)
class Region:
    """An image region, always naming the instance(s) it lies on.

    - ``box`` (x, y, width, height) or ``polygon`` ((x, y), ...) in pixels of one instance/frame;
    - ``mask``: a uint8 label image (PNG or NPZ file beside the result) of one instance/frame;
    - ``mask3d``: a uint8 label volume (NPZ) over a series, one plane per referenced slice, in
      ``slice_uids`` order;
    - ``slide``: a box or polygon on a whole-slide image, in pixels of pyramid ``level`` or in
      micrometres (``units="um"``).

    ``shape`` is the mask's (rows, columns) or (slices, rows, columns); ``labels`` names the
    non-zero label values of a mask.
    """

    id: str
    kind: str = ""
    instance_uid: str | None = None
    frame: int | None = None
    box: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    mask_path: str | None = None
    shape: tuple[int, ...] | None = None
    series_uid: str | None = None
    slice_uids: tuple[str, ...] = ()
    units: str | None = None
    level: int | None = None
    labels: Mapping[int, str] = field(default_factory=dict)
    label: str = ""
    code: Code | None = None

    def __post_init__(self) -> None:
        _require(bool(self.id), "region needs an id")
        kind = self.kind or ("mask" if self.mask_path else
                             "polygon" if self.polygon is not None else "box")
        _require(kind in REGION_KINDS, f"region {self.id!r}: kind must be one of {REGION_KINDS}")
        object.__setattr__(self, "kind", kind)
        where = f"region {self.id!r} ({kind})"
        if self.box is not None:
            _require(len(self.box) == 4 and all(math.isfinite(float(v)) for v in self.box)
                     and self.box[2] >= 0 and self.box[3] >= 0,
                     f"{where}: box must be (x, y, width, height), sizes >= 0")
            object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if self.polygon is not None:
            points = tuple((float(x), float(y)) for x, y in self.polygon)
            _require(len(points) >= 3 and all(math.isfinite(v) for p in points for v in p),
                     f"{where}: a polygon needs at least 3 finite (x, y) points")
            object.__setattr__(self, "polygon", points)
        object.__setattr__(self, "slice_uids", tuple(self.slice_uids))
        object.__setattr__(self, "labels", {int(k): str(v) for k, v in dict(self.labels).items()})
        object.__setattr__(self, "code", _optional_code(self.code, self.label or self.id))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        if kind in ("box", "polygon"):
            _require(self.box is not None if kind == "box" else self.polygon is not None,
                     f"{where} needs its {kind}")
            _require(bool(self.instance_uid), f"{where} must name its source instance")
        elif kind in ("mask", "mask3d"):
            _require(bool(self.mask_path), f"{where} needs a mask file")
            _require(str(self.mask_path).lower().endswith(MASK_SUFFIXES if kind == "mask"
                                                          else (".npz",)),
                     f"{where}: mask file must be {'PNG or NPZ' if kind == 'mask' else 'NPZ'}")
            ndim = 2 if kind == "mask" else 3
            _require(self.shape is not None and len(self.shape) == ndim
                     and all(v > 0 for v in self.shape),
                     f"{where}: shape must give the mask's {ndim} sizes")
            if kind == "mask":
                _require(bool(self.instance_uid), f"{where} must name its source instance")
            else:
                _require(bool(self.series_uid) and bool(self.slice_uids),
                         f"{where} must name its series and the slices it covers")
                _require(len(self.slice_uids) == self.shape[0],
                         f"{where}: {len(self.slice_uids)} slice UIDs for {self.shape[0]} "
                         "mask planes")
        else:  # slide
            _require(bool(self.instance_uid) or bool(self.series_uid),
                     f"{where} must name its source instance or series")
            _require(self.units in SLIDE_UNITS, f"{where}: units must be one of {SLIDE_UNITS}")
            _require(self.units != "level" or (self.level is not None and self.level >= 0),
                     f"{where}: level coordinates need the pyramid level")
            _require((self.box is None) != (self.polygon is None),
                     f"{where} needs a box or a polygon (one of them)")

    @property
    def instances(self) -> tuple[str, ...]:
        """The SOP Instance UIDs the region lies on."""
        if self.kind == "mask3d":
            return self.slice_uids
        return (self.instance_uid,) if self.instance_uid else ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "label": self.label,
                               "instance_uid": self.instance_uid, "frame": self.frame,
                               "box": list(self.box) if self.box else None,
                               "mask_path": self.mask_path,
                               "code": self.code.to_dict() if self.code else None}
        if self.polygon is not None:
            out["polygon"] = [list(p) for p in self.polygon]
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.series_uid:
            out["series_uid"] = self.series_uid
        if self.slice_uids:
            out["slice_uids"] = list(self.slice_uids)
        if self.kind == "slide":
            out["units"], out["level"] = self.units, self.level
        if self.labels:
            out["labels"] = {str(k): v for k, v in self.labels.items()}
        return out


@dataclass(frozen=True)
class Finding:
    """A statement about the study. ``evidence`` lists measurement and region ids behind it;
    ``knowledge`` lists knowledge-base entry ids that define it. ``code`` may be given as text
    (``SCHEME:value``, or a bare value of MedGate's own scheme); it is kept as a ``Code`` whose
    meaning is the label."""

    code: Code
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
        object.__setattr__(self, "code", Code.parse(self.code, self.label))
        _require(self.state in FINDING_STATES,
                 f"finding state must be one of {FINDING_STATES}, not {self.state!r}")
        if self.score is not None:
            _require(math.isfinite(self.score),
                     f"finding {self.code.value!r} has a non-finite score")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.to_dict(), "label": self.label, "state": self.state,
                "score": self.score, "evidence": list(self.evidence),
                "knowledge": list(self.knowledge), "where": self.where.to_dict(),
                "criteria": self.criteria, "abnormal": self.abnormal}


@dataclass(frozen=True)
class Statement:
    """A finding a generated sentence expresses: its code and what the sentence says of it."""

    code: Code
    state: Literal["present", "absent", "uncertain"] = "present"

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", Code.parse(self.code, str(self.code)))
        _require(self.state in FINDING_STATES,
                 f"statement state must be one of {FINDING_STATES}, not {self.state!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.to_dict(), "state": self.state}


@dataclass(frozen=True)
class GeneratedSentence:
    """One sentence a model wrote, with the findings it expresses (when the family or the
    domain's labeller knows them) and the ids of the measurements it quotes."""

    text: str
    findings: tuple[Statement, ...] = ()
    measurements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(isinstance(self.text, str) and bool(self.text.strip()),
                 "a generated sentence needs text")
        object.__setattr__(self, "text", self.text.strip())
        object.__setattr__(self, "findings", tuple(self.findings))
        object.__setattr__(self, "measurements", tuple(self.measurements))

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "findings": [f.to_dict() for f in self.findings],
                "measurements": list(self.measurements)}


@dataclass(frozen=True)
class TextSection:
    """A section of generated text ("findings", "impression", ...), sentence by sentence."""

    name: str
    sentences: tuple[GeneratedSentence, ...]

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(self.name.strip()),
                 "a text section needs a name")
        object.__setattr__(self, "sentences", tuple(self.sentences))
        _require(all(isinstance(s, GeneratedSentence) for s in self.sentences),
                 f"section {self.name!r} must hold GeneratedSentence objects")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sentences": [s.to_dict() for s in self.sentences]}


@dataclass(frozen=True)
class ModelInfo:
    """Which model made a result: family, version and the digest of its weights manifest."""

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
    # generated text, sentence by sentence; only verified sentences ever reach a draft
    text: list[TextSection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [m.id for m in self.measurements] + [r.id for r in self.regions]
        _require(len(ids) == len(set(ids)), "measurement and region ids must be unique in a result")
        known = set(ids)
        for f in self.findings:
            missing = [e for e in f.evidence if e not in known]
            _require(not missing, f"finding {f.code.value!r} cites unknown evidence {missing}")
        _require(isinstance(self.text, list) and
                 all(isinstance(t, TextSection) for t in self.text),
                 "result text must be a list of TextSection objects")
        measured = {m.id for m in self.measurements}
        for section in self.text:
            for s in section.sentences:
                missing = [m for m in s.measurements if m not in measured]
                _require(not missing, f"generated sentence {s.text[:40]!r} quotes unknown "
                                      f"measurements {missing}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "trained": self.trained,
                "findings": [f.to_dict() for f in self.findings],
                "measurements": [m.to_dict() for m in self.measurements],
                "regions": [r.to_dict() for r in self.regions],
                "text": [t.to_dict() for t in self.text], "warnings": list(self.warnings),
                "raw": self.raw}


LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")  # BCP 47: "en", "zh", "zh-Hans"


@dataclass(frozen=True)
class Prompt:
    """An interactive question about a study, optionally pointing at one instance/frame with a
    point (x, y), a box (x, y, width, height) or a drawn mask (a uint8 PNG or NPZ file)."""

    question: str
    language: str = "en"
    instance_uid: str | None = None
    frame: int | None = None
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    mask_path: str | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.question, str) and bool(self.question.strip()),
                 "a prompt needs a question")
        _require(isinstance(self.language, str) and bool(LANGUAGE.match(self.language)),
                 f"prompt language must be a BCP 47 tag such as 'en' or 'zh', "
                 f"not {self.language!r}")
        spatial = [k for k in ("point", "box", "mask_path") if getattr(self, k) is not None]
        _require(len(spatial) <= 1, f"a prompt points with one of point, box or mask, not "
                                    f"{' and '.join(spatial)}")
        if spatial:
            _require(bool(self.instance_uid), "a prompt that points needs the instance it "
                                              "points on")
        if self.point is not None:
            _require(len(self.point) == 2 and all(math.isfinite(float(v)) for v in self.point),
                     "prompt point must be (x, y)")
            object.__setattr__(self, "point", (float(self.point[0]), float(self.point[1])))
        if self.box is not None:
            _require(len(self.box) == 4 and self.box[2] >= 0 and self.box[3] >= 0,
                     "prompt box must be (x, y, width, height), sizes >= 0")
            object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if self.mask_path is not None:
            _require(str(self.mask_path).lower().endswith(MASK_SUFFIXES),
                     "prompt mask must be a PNG or NPZ file")
        if self.frame is not None:
            _require(int(self.frame) >= 1, "frame numbers start at 1 (PS3.3 C.7.6.6)")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prompt:
        allowed = {"question", "language", "instance_uid", "frame", "point", "box", "mask_path"}
        unknown = sorted(set(data) - allowed)
        _require(not unknown, f"unknown prompt field(s) {unknown}; allowed: {sorted(allowed)}")
        values = dict(data)
        for key in ("point", "box"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    path: Path
    number: int | None = None


@dataclass(frozen=True)
class SeriesInput:
    """One series of a study: its UID, modality and instances in order."""

    series_uid: str
    modality: str
    instances: tuple[InstanceRef, ...]

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]


def series_from_metadata(paths: list[Path], metadata: list[dict[str, Any]]
                         ) -> list[SeriesInput]:
    """Series structure from per-instance metadata (DICOM keywords), in first-seen order and
    instance order within a series; files without metadata each stand alone."""
    groups: dict[str, tuple[str, list[InstanceRef]]] = {}
    for n, path in enumerate(paths):
        md = metadata[n] if n < len(metadata) else {}
        uid = str(md.get("SeriesInstanceUID") or f"file:{path}")
        number = md.get("InstanceNumber")
        ref = InstanceRef(str(md.get("SOPInstanceUID") or path.name), path,
                          int(number) if isinstance(number, int | float) else None)
        groups.setdefault(uid, (str(md.get("Modality") or ""), []))[1].append(ref)
    out = []
    for uid, (modality, refs) in groups.items():
        if all(r.number is not None for r in refs):
            refs = sorted(refs, key=lambda r: r.number)  # type: ignore[arg-type, return-value]
        out.append(SeriesInput(uid, modality, tuple(refs)))
    return out


@dataclass
class StudyInput:
    """What an engine sees of a study: files, metadata (one dict per instance, DICOM keywords),
    the series they form, the prior of the same patient and domain, an optional interactive
    prompt, and a folder where the engine may write mask files that its regions name."""

    domain: str
    paths: list[Path]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    study_uid: str | None = None
    prior: StudyInput | None = None
    prompt: Prompt | None = None
    series: list[SeriesInput] = field(default_factory=list)
    output_dir: Path | None = None
    # the results of the engines that ran before this one in the same job (the CT assistant
    # reads the measured quantities), and the knowledge search the platform offers:
    # knowledge(query, domain) -> [{"id", "title", "passage", "score"}], adaptively selected
    earlier: list[EngineResult] = field(default_factory=list)
    knowledge: Callable[[str, str], list[dict[str, Any]]] | None = None

    def instance_path(self, uid: str | None) -> Path | None:
        """The file of the instance with SOP Instance UID ``uid``, or None."""
        return next((i.path for s in self.series for i in s.instances
                     if i.sop_instance_uid == uid), None)

    def __post_init__(self) -> None:
        _require(self.domain in DOMAINS, f"domain must be one of {DOMAINS}, not {self.domain!r}")
        self.paths = [Path(p) for p in self.paths]
        _require(bool(self.paths), "a study input needs at least one file")
        if isinstance(self.prompt, Mapping):
            self.prompt = Prompt.from_dict(self.prompt)
        _require(self.prompt is None or isinstance(self.prompt, Prompt),
                 "a study prompt must be a Prompt")
        if not self.series:
            self.series = series_from_metadata(self.paths, self.metadata)
        listed = sorted(str(p) for s in self.series for p in s.paths)
        _require(listed == sorted(str(p) for p in self.paths),
                 "the series of a study input must hold exactly its files")


@dataclass(frozen=True)
class ModelSpec:
    """How to build one engine: family, version, variant, weights (a file or a folder), the
    digest of their registered manifest, config, and the device and dtype of the worker."""

    family: str
    version: str
    variant: Literal["reference", "checkpoint", "builtin"] = "builtin"
    weights_path: str | None = None
    sha256: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str | None = None

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
    """An engine is built from its spec (cheap: check the spec), may define ``load()`` (the
    expensive part: weights, tokenizer; the platform calls it once and times it) and runs once
    per study."""

    family: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    domains: ClassVar[tuple[str, ...]]

    def run(self, study: StudyInput) -> EngineResult: ...


def load_engine(engine: Engine) -> Engine:
    """Call the engine's ``load()`` when it has one; return the engine."""
    load = getattr(engine, "load", None)
    if callable(load):
        load()
    return engine


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

    for mod in ("models.technical", "models.ecg", "models.cxr", "models.vlm", "models.pixel",
                "models.ct", "models.pathology"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a family not built yet
            if exc.name != mod:
                raise
