"""The draft types: a draft is sections of sentences, each sentence with the evidence it rests on.
A ``Sentence`` refuses to exist without evidence, so no code path can put an ungrounded sentence
into a report. Drafts are stored as JSON in the report version's content (``to_dict``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SECTIONS = ("technique", "findings", "impression")
EVIDENCE_KINDS = ("measurement", "finding", "region", "knowledge", "acquisition")


class DraftError(ValueError):
    """A draft, sentence or piece of evidence that breaks the composer's rules."""


@dataclass(frozen=True)
class Evidence:
    """What a sentence rests on. ``model`` is ``family@version``; ``detail`` holds the value and
    unit of a measurement, the label of a finding, the box of a region or the title of a
    knowledge entry."""

    kind: str
    ref: str
    model: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVIDENCE_KINDS:
            raise DraftError(f"evidence kind must be one of {EVIDENCE_KINDS}, not {self.kind!r}")
        if not isinstance(self.ref, str) or not self.ref:
            raise DraftError("evidence needs a reference (measurement id, finding code, ...)")
        if not isinstance(self.model, str) or "@" not in self.model:
            raise DraftError(f"evidence model must be 'family@version', not {self.model!r}")
        object.__setattr__(self, "detail", dict(self.detail))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "model": self.model,
                "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        return cls(kind=data.get("kind", ""), ref=data.get("ref", ""),
                   model=data.get("model", ""), detail=data.get("detail") or {})


@dataclass(frozen=True)
class Sentence:
    """One sentence of a draft with the evidence behind it; it cannot be built without any.
    ``author`` is ``family@version`` when the words are a model's own (generated text that was
    verified), None when MedGate composed them from results."""

    text: str
    evidence: tuple[Evidence, ...]
    author: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise DraftError("a sentence needs text")
        evidence = tuple(self.evidence or ())
        if not evidence:
            raise DraftError(f"sentence {self.text!r} has no evidence; drafts state only what is "
                             "grounded")
        if not all(isinstance(e, Evidence) for e in evidence):
            raise DraftError("sentence evidence must be Evidence objects")
        object.__setattr__(self, "text", self.text.strip())
        object.__setattr__(self, "evidence", evidence)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "evidence": [e.to_dict() for e in self.evidence]}
        if self.author:
            out["author"] = self.author
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sentence:
        return cls(text=data.get("text", ""),
                   evidence=tuple(Evidence.from_dict(e) for e in data.get("evidence") or ()),
                   author=data.get("author"))


@dataclass
class Draft:
    """A draft report: sections of evidenced sentences, plus what was left out and why.

    ``excluded``: untrained results (family@version), never used. ``unverified``: sentences a
    trained model wrote that no grounded source confirms ("model text, not verified"), each with
    the model, its section and the reason; kept for the reader, never report text."""

    sections: dict[str, list[Sentence]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    unverified: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise DraftError(f"unknown draft section(s) {unknown}; sections are {SECTIONS}")
        for name, sentences in self.sections.items():
            if not all(isinstance(s, Sentence) for s in sentences):
                raise DraftError(f"section {name!r} must hold Sentence objects")
        self.sections = {name: list(self.sections.get(name, [])) for name in SECTIONS}

    def to_dict(self) -> dict[str, Any]:
        return {"sections": {k: [s.to_dict() for s in v] for k, v in self.sections.items()},
                "warnings": list(self.warnings), "excluded": list(self.excluded),
                "notes": list(self.notes), "models": list(self.models),
                "unverified": [dict(u) for u in self.unverified]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Draft:
        sections = {k: [Sentence.from_dict(s) for s in v]
                    for k, v in (data.get("sections") or {}).items()}
        return cls(sections=sections, warnings=list(data.get("warnings") or []),
                   excluded=list(data.get("excluded") or []), notes=list(data.get("notes") or []),
                   models=list(data.get("models") or []),
                   unverified=list(data.get("unverified") or []))

    def text(self) -> str:
        """The plain text of the sections that have sentences."""
        parts = []
        for name in SECTIONS:
            sentences = self.sections[name]
            if not sentences:
                continue
            if name == "impression" and len(sentences) > 1:
                body = "\n".join(f"{i}. {s.text}" for i, s in enumerate(sentences, start=1))
            else:
                body = " ".join(s.text for s in sentences)
            parts.append(f"{name.upper()}\n{body}")
        return "\n\n".join(parts)

    def is_empty(self) -> bool:
        return not any(self.sections.values())
