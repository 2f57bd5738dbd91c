"""A site engine for retry tests: its first run on a study meets a transient I/O error
(EAGAIN, as from a busy network share); later runs succeed."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import ClassVar

from models.base import EngineResult, ModelInfo, ModelSpec, StudyInput, register


class FlakyEngine:
    family: ClassVar[str] = "test-flaky"
    tasks: ClassVar[tuple[str, ...]] = ("measure",)
    domains: ClassVar[tuple[str, ...]] = ("cxr", "ct", "ecg", "pathology")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def run(self, study: StudyInput) -> EngineResult:
        marker = Path(os.environ["FLAKY_MARKER"])
        if not marker.exists():
            marker.write_text("failed once")
            raise OSError(errno.EAGAIN, "resource temporarily unavailable")
        return EngineResult(model=ModelInfo(self.family, self.spec.version), trained=True)


@register("test-flaky")
def build(spec: ModelSpec) -> FlakyEngine:
    return FlakyEngine(spec)
