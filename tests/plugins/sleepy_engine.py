"""A site engine for fault tests: it takes its time, so a test can kill the worker mid-job.
Loaded by workers through MEDGATE_ENGINE_PLUGINS, like any site's own engine."""

from __future__ import annotations

import os
import time
from typing import ClassVar

from models.base import EngineResult, ModelInfo, ModelSpec, StudyInput, register


class SleepyEngine:
    family: ClassVar[str] = "test-sleepy"
    tasks: ClassVar[tuple[str, ...]] = ("measure",)
    domains: ClassVar[tuple[str, ...]] = ("cxr", "ct", "ecg", "pathology")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def run(self, study: StudyInput) -> EngineResult:
        time.sleep(float(os.environ.get("SLEEPY_SECONDS", "5")))
        return EngineResult(model=ModelInfo(self.family, self.spec.version), trained=True,
                            raw={"slept": True})


@register("test-sleepy")
def build(spec: ModelSpec) -> SleepyEngine:
    return SleepyEngine(spec)
