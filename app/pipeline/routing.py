"""Routing rules: which domain, engine pipeline and queue a study goes to, from its DICOM metadata.

A rule matches a study when every criterion it sets matches (any-of within a list): Modality,
SOPClassUID, BodyPartExamined, view position and a regular expression over the study and series
descriptions. Rules are plain data, stored as JSON by the database layer (``to_dict``/
``from_dict``) and validated on construction, so an invalid rule cannot exist in memory.

This module is pure: it must never read files, touch the database or the broker, or run engines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.base import DOMAINS

QUEUES = ("ingest", "cxr", "ct", "ecg", "pathology", "export")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1

# PS3.4 B.5 storage SOP classes used by the default rules.
ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
ECG_GENERAL = "1.2.840.10008.5.1.4.1.1.9.1.2"
ECG_AMBULATORY = "1.2.840.10008.5.1.4.1.1.9.1.3"
VL_WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"


class RuleError(ValueError):
    """A routing rule that cannot be built: the message says which field and why."""


def _strings(name: str, value: Any, upper: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise RuleError(f"{name} must be a list of strings, not {type(value).__name__}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise RuleError(f"{name} must hold strings, not {item!r}")
        item = item.strip()
        out.append(item.upper() if upper else item)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class StudyMeta:
    """What routing sees of a study: the sets of values over its instances."""

    modalities: frozenset[str] = frozenset()
    sop_class_uids: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    study_description: str = ""
    series_descriptions: tuple[str, ...] = ()
    view_positions: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {"modalities": sorted(self.modalities),
                "sop_class_uids": sorted(self.sop_class_uids),
                "body_parts": sorted(self.body_parts),
                "study_description": self.study_description,
                "series_descriptions": list(self.series_descriptions),
                "view_positions": sorted(self.view_positions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyMeta:
        return cls(modalities=frozenset(s.upper() for s in data.get("modalities", ())),
                   sop_class_uids=frozenset(data.get("sop_class_uids", ())),
                   body_parts=frozenset(s.upper() for s in data.get("body_parts", ())),
                   study_description=str(data.get("study_description") or ""),
                   series_descriptions=tuple(data.get("series_descriptions", ())),
                   view_positions=frozenset(s.upper() for s in data.get("view_positions", ())))


def _pipeline_items(where: str, value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Families and the optional ones from a pipeline: each item is a family name (required) or
    ``{"family": name, "required": false}``."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise RuleError(f"{where}: pipeline must be a list, not {type(value).__name__}")
    families, optional = [], []
    for item in value:
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - {"family", "required"})
            if unknown:
                raise RuleError(f"{where}: pipeline step {dict(item)!r} has unknown field(s) "
                                f"{unknown}; a step is a family name or "
                                '{"family": ..., "required": true|false}')
            family, required = item.get("family"), item.get("required", True)
            if not isinstance(required, bool):
                raise RuleError(f"{where}: 'required' of pipeline step {family!r} must be true "
                                "or false")
        else:
            family, required = item, True
        if not isinstance(family, str) or not family.strip():
            raise RuleError(f"{where}: pipeline steps must name an engine family, not {item!r}")
        families.append(family.strip())
        if not required:
            optional.append(family.strip())
    return tuple(families), tuple(optional)


def pipeline_steps(items: Iterable[Any]) -> list[tuple[str, bool]]:
    """(family, required) for each step of a stored pipeline (a rule's or a job's)."""
    families, optional = _pipeline_items("pipeline", list(items))
    return [(f, f not in optional) for f in families]


@dataclass(frozen=True, kw_only=True)
class RouteRule:
    """One routing rule. An empty criterion matches anything; ``""`` in ``body_part`` matches a
    study whose instances record no BodyPartExamined. Higher ``priority`` wins.

    ``pipeline`` runs in order. Each engine is required unless listed in ``optional`` (or given
    as ``{"family": ..., "required": false}``): an optional engine that fails or refuses its
    input adds a warning to the draft and the job goes on; a required one fails the job."""

    name: str
    domain: str
    pipeline: tuple[str, ...]
    optional: tuple[str, ...] = ()
    queue: str = ""  # empty: the domain's own queue
    priority: int = 0
    modality: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    description_pattern: str | None = None
    view_positions: tuple[str, ...] = ()
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise RuleError("a rule needs a non-empty name")
        where = f"rule {self.name!r}"
        if self.domain not in DOMAINS:
            raise RuleError(f"{where}: domain must be one of {DOMAINS}, not {self.domain!r}")
        queue = self.queue or self.domain
        if queue not in QUEUES:
            raise RuleError(f"{where}: queue must be one of {QUEUES}, not {queue!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise RuleError(f"{where}: priority must be an integer, not {self.priority!r}")
        pipeline, optional = _pipeline_items(where, self.pipeline)
        if not pipeline:
            raise RuleError(f"{where}: pipeline must list at least one engine family")
        if len(set(pipeline)) != len(pipeline):
            raise RuleError(f"{where}: pipeline lists a family twice: {list(pipeline)}")
        optional = tuple(dict.fromkeys(
            (*optional, *_strings(f"{where}: optional", self.optional, upper=False))))
        stray = [f for f in optional if f not in pipeline]
        if stray:
            raise RuleError(f"{where}: optional names {stray}, which the pipeline does not run")
        sops = _strings(f"{where}: sop_class_uids", self.sop_class_uids, upper=False)
        bad = [u for u in sops if len(u) > 64 or not _UID.match(u)]
        if bad:
            raise RuleError(f"{where}: not valid DICOM UIDs: {bad}")
        regex = None
        if self.description_pattern is not None:
            if not isinstance(self.description_pattern, str) or not self.description_pattern:
                raise RuleError(f"{where}: description_pattern must be a non-empty string or None")
            try:
                regex = re.compile(self.description_pattern, re.IGNORECASE)
            except re.error as exc:
                raise RuleError(f"{where}: description_pattern is not a valid regular expression "
                                f"({exc})") from exc
        values = {
            "queue": queue, "pipeline": pipeline, "optional": optional, "sop_class_uids": sops,
            "_regex": regex,
            "modality": _strings(f"{where}: modality", self.modality, upper=True),
            "body_part": _strings(f"{where}: body_part", self.body_part, upper=True),
            "view_positions": _strings(f"{where}: view_positions", self.view_positions, upper=True),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)
        if not (self.modality or self.sop_class_uids or self.body_part or regex
                or self.view_positions):
            raise RuleError(f"{where}: a rule needs at least one criterion")

    def matches(self, study: StudyMeta) -> bool:
        if self.modality and not study.modalities & set(self.modality):
            return False
        if self.sop_class_uids and not study.sop_class_uids & set(self.sop_class_uids):
            return False
        if self.body_part and not (study.body_parts or {""}) & set(self.body_part):
            return False
        if self.view_positions and not study.view_positions & set(self.view_positions):
            return False
        if self._regex is not None:
            texts = [study.study_description, *study.series_descriptions]
            if not any(self._regex.search(t) for t in texts if t):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "priority": self.priority, "modality": list(self.modality),
                "sop_class_uids": list(self.sop_class_uids), "body_part": list(self.body_part),
                "description_pattern": self.description_pattern,
                "view_positions": list(self.view_positions), "domain": self.domain,
                "pipeline": self.pipeline_json(), "queue": self.queue}

    def pipeline_json(self) -> list[Any]:
        """The pipeline as stored and shown: a family name per required step,
        ``{"family": ..., "required": false}`` per optional one."""
        return [{"family": f, "required": False} if f in self.optional else f
                for f in self.pipeline]

    def steps(self) -> list[tuple[str, bool]]:
        return [(f, f not in self.optional) for f in self.pipeline]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouteRule:
        allowed = {"name", "priority", "modality", "sop_class_uids", "body_part",
                   "description_pattern", "view_positions", "domain", "pipeline", "optional",
                   "queue"}
        if not isinstance(data, Mapping):
            raise RuleError(f"a rule must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise RuleError(f"unknown rule field(s) {unknown}; allowed: {sorted(allowed)}")
        missing = [k for k in ("name", "domain", "pipeline") if k not in data]
        if missing:
            raise RuleError(f"rule {data.get('name')!r} lacks {missing}")
        return cls(**dict(data))


def rules_from_dicts(items: Iterable[Mapping[str, Any]]) -> list[RouteRule]:
    """Rules from their JSON form; rule names must be unique."""
    rules = [RouteRule.from_dict(item) for item in items]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RuleError(f"rule names must be unique; repeated: {dupes}")
    return rules


CHEST_WORDS = r"\b(chest|thorax|thoracic|lungs?|cxr|pulmonary)\b"
CXR_VIEWS = ("PA", "AP", "LL", "RL", "LATERAL", "LAT", "POSTERO-ANTERIOR", "ANTERO-POSTERIOR",
             "LEFT LATERAL", "RIGHT LATERAL")

DEFAULT_RULES: tuple[RouteRule, ...] = (
    RouteRule(name="ecg-waveform", priority=100, domain="ecg",
              sop_class_uids=(ECG_12_LEAD, ECG_GENERAL, ECG_AMBULATORY),
              pipeline=("technical", "ecg-measure", "merl"), optional=("merl",)),
    RouteRule(name="ecg-modality", priority=90, domain="ecg", modality=("ECG",),
              pipeline=("technical", "ecg-measure", "merl"), optional=("merl",)),
    RouteRule(name="pathology-wsi", priority=100, domain="pathology",
              sop_class_uids=(VL_WHOLE_SLIDE,), pipeline=("technical", "slide-quant")),
    RouteRule(name="pathology-sm", priority=90, domain="pathology", modality=("SM",),
              pipeline=("technical", "slide-quant")),
    RouteRule(name="cxr-chest", priority=60, domain="cxr", modality=("CR", "DX"),
              body_part=("CHEST", "THORAX"), pipeline=("technical", "promptmrg", "libra"),
              optional=("promptmrg", "libra")),
    RouteRule(name="cxr-description", priority=55, domain="cxr", modality=("CR", "DX"),
              body_part=("",), description_pattern=CHEST_WORDS,
              pipeline=("technical", "promptmrg", "libra"), optional=("promptmrg", "libra")),
    RouteRule(name="cxr-view", priority=50, domain="cxr", modality=("CR", "DX"),
              body_part=("",), view_positions=CXR_VIEWS,
              pipeline=("technical", "promptmrg", "libra"), optional=("promptmrg", "libra")),
    RouteRule(name="ct", priority=50, domain="ct", modality=("CT",),
              pipeline=("technical", "ct-quant", "ct-assistant"), optional=("ct-assistant",)),
)


def match(rules: Sequence[RouteRule], study: StudyMeta | Mapping[str, Any]) -> list[RouteRule]:
    """The matching rules, one per domain (its highest priority; the earlier rule on a tie),
    highest priority first. Usually one; more means the study spans domains."""
    meta = study if isinstance(study, StudyMeta) else StudyMeta.from_dict(study)
    best: dict[str, tuple[int, RouteRule]] = {}
    for order, rule in enumerate(rules):
        if rule.matches(meta):
            held = best.get(rule.domain)
            if held is None or rule.priority > held[1].priority:
                best[rule.domain] = (order, rule)
    return [r for _, r in sorted(best.values(), key=lambda x: (-x[1].priority, x[0]))]


def _view_names(meta: Mapping[str, Any]) -> list[str]:
    views = [str(meta.get("ViewPosition") or "").strip().upper()]
    for item in meta.get("ViewCodeSequence") or ():
        if isinstance(item, Mapping):
            views.append(str(item.get("CodeMeaning") or "").strip().upper())
    return [v for v in views if v]


def summarise(instances_metadata: Sequence[Mapping[str, Any]]) -> StudyMeta:
    """Summarise a study from one metadata dict per instance (DICOM keywords as keys)."""
    def values(key: str, upper: bool = True) -> frozenset[str]:
        found = (str(m.get(key) or "").strip() for m in instances_metadata)
        return frozenset((v.upper() if upper else v) for v in found if v)

    descriptions = dict.fromkeys(str(m.get("SeriesDescription") or "").strip()
                                 for m in instances_metadata)
    study_desc = next((str(m["StudyDescription"]).strip() for m in instances_metadata
                       if m.get("StudyDescription")), "")
    return StudyMeta(modalities=values("Modality"),
                     sop_class_uids=values("SOPClassUID", upper=False),
                     body_parts=values("BodyPartExamined"),
                     study_description=study_desc,
                     series_descriptions=tuple(d for d in descriptions if d),
                     view_positions=frozenset(v for m in instances_metadata
                                              for v in _view_names(m)))
