"""A small report-writing family for tests, loaded by workers through MEDGATE_ENGINE_PLUGINS like
any site's own family. It has what a real one has: a module tree declared for ``inspect``, a
folder checkpoint loaded strictly through the runtime, ``load()`` kept apart from ``run()``, a
classifier whose findings ground generated sentences, and a reference variant with random weights.

What it classifies and writes comes from its registered config (``classes``: code -> [label,
state]; ``report``: sentences with the findings they express), so a test can state exactly which
sentence agrees with the classifier and which does not. ``LOADS`` counts ``load()`` calls in this
process.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from models.base import (
    ContractError,
    EngineResult,
    Finding,
    GeneratedSentence,
    Measurement,
    ModelInfo,
    ModelSpec,
    Statement,
    StudyInput,
    TextSection,
    register,
)
from models.runtime.checkpoint import load_state_dict
from models.runtime.strict import strict_load
from models.runtime.tree import TreeSpec, register_tree

FAMILY = "test-reporter"
LOADS: list[str] = []  # version of each load() in this process


class TinyReporter(nn.Module):
    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, width), nn.LayerNorm(width))
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.encoder(x)))


def build_tree(variant: str, config: str) -> nn.Module:
    return TinyReporter(width=8 if config == "tiny" else 32)


register_tree(TreeSpec(FAMILY, build_tree, configs=("tiny", "small"), default_config="tiny"))


class ReportEngine:
    family: ClassVar[str] = FAMILY
    tasks: ClassVar[tuple[str, ...]] = ("report", "classify")
    domains: ClassVar[tuple[str, ...]] = ("cxr", "ct", "ecg", "pathology")

    def __init__(self, spec: ModelSpec) -> None:
        if spec.variant == "checkpoint" and not Path(str(spec.weights_path)).exists():
            raise ContractError(f"{FAMILY} weights not found: {spec.weights_path}")
        classes = spec.config.get("classes", {})
        if not isinstance(classes, dict) or not all(
                isinstance(v, list) and len(v) == 2 for v in classes.values()):
            raise ContractError("config 'classes' must map each code to [label, state]")
        self.spec = spec
        self.model: TinyReporter | None = None

    def load(self) -> None:
        LOADS.append(self.spec.version)
        if self.spec.variant == "checkpoint":
            with torch.device("meta"):
                model = TinyReporter()
            strict_load(model, load_state_dict(self.spec.weights_path),
                        what=f"{FAMILY} tiny")
        else:
            torch.manual_seed(0)
            model = TinyReporter()
        self.model = model.eval()

    def run(self, study: StudyInput) -> EngineResult:
        if self.model is None:
            self.load()
        # the weights take part: one score per class from the first file's first bytes
        data = Path(study.paths[0]).read_bytes()[:16].ljust(16, b"\0")
        x = torch.tensor(list(data), dtype=torch.float32)[None] / 255.0
        with torch.no_grad():
            scores = self.model(x)[0].tolist()
        cfg = self.spec.config
        findings = [Finding(code, label, state=state, score=round(scores[i % len(scores)], 4),
                            criteria="test classifier")
                    for i, (code, (label, state)) in enumerate(cfg.get("classes", {}).items())]
        measurements = [Measurement(name, float(value), unit)
                        for name, value, unit in cfg.get("measurements", [])]
        sections: dict[str, list[GeneratedSentence]] = {}
        for item in cfg.get("report", []):
            sections.setdefault(item.get("section", "findings"), []).append(GeneratedSentence(
                item["text"], tuple(Statement(c, s) for c, s in item.get("findings", [])),
                tuple(item.get("measurements", []))))
        return EngineResult(
            model=ModelInfo(FAMILY, self.spec.version, self.spec.sha256),
            trained=self.spec.variant == "checkpoint", findings=findings,
            measurements=measurements,
            text=[TextSection(name, tuple(s)) for name, s in sections.items()],
            raw={"loads": list(LOADS), "scores": scores, "device": self.spec.device,
                 "dtype": self.spec.dtype})


@register(FAMILY)
def build(spec: ModelSpec) -> ReportEngine:
    return ReportEngine(spec)
