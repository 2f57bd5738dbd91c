"""Validating one model version on its family's validation case, before it is activated.

``validate`` builds a fresh engine (never a worker's ``EngineCache``: a version under validation
must not replace, or be served as, the active one), verifies the registered manifest first when
one is given, loads strictly, runs the study once and checks the result against the case's
``expect`` (``models.validation``). It records pass or fail, load and run seconds, the peak
memory growth during load and run (resident memory, and CUDA memory on a GPU), the first failure
with its own message, every check, and a summary of what the version produced. A model that
fails (a key missing from the checkpoint, a file changed after registration, an exception while
running, a result that misses the expectations) is an outcome with ``passed=False``, never an
exception; only a malformed ``expect`` (the caller's mistake) raises ``CaseError``.

torch is imported only for a CUDA spec (or, to free cached memory, when something else already
imported it); the rule-based families validate without it.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.base import (
    ContractError,
    EngineResult,
    Measurement,
    ModelSpec,
    StudyInput,
    build,
    load_engine,
)
from models.runtime.manifest import Manifest, verify_manifest
from models.validation import Case, CaseError, check_expect

SAMPLE_SECONDS = 0.005  # resident memory is sampled every 5 ms during load and run
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class ValidationOutcome:
    passed: bool
    load_seconds: float | None
    run_seconds: float | None
    peak_memory_bytes: int | None  # peak growth of the process's resident memory (load + run)
    peak_gpu_bytes: int | None  # peak growth of CUDA memory allocated (load + run), else None
    error: str | None  # the first failure, with its own message
    checks: list[dict[str, Any]] = field(default_factory=list)  # {check, passed, detail}
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(error: str, check: str) -> ValidationOutcome:
    """An outcome for a failure before the version itself was built (its study, its inputs)."""
    return ValidationOutcome(False, None, None, None, None, error,
                             [{"check": check, "passed": False, "detail": error}], {})


def describe_error(exc: BaseException) -> str:
    """A ContractError's message as it is (it already says what differs); other exceptions as
    ``Type: message``."""
    return str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"


def study_for(case: Case, metadata: list[dict[str, Any]], output_dir: Path | None = None,
              *, family: str | None = None) -> StudyInput:
    """The StudyInput of ``case``: its files with the caller's per-file metadata (DICOM
    keywords; the platform reads them with its header reader), series from that metadata, and
    the case's prompt (for ``family``: only when the case gives it the prompt)."""
    if len(metadata) != len(case.files):
        raise CaseError(f"case {case.name}: {len(metadata)} metadata entries for "
                        f"{len(case.files)} files")
    prompt = case.prompt if family is None else case.prompt_for(family)
    return StudyInput(domain=case.domain, paths=list(case.files), metadata=list(metadata),
                      study_uid=next((str(m["StudyInstanceUID"]) for m in metadata
                                      if m.get("StudyInstanceUID")), None),
                      prompt=prompt, output_dir=output_dir)


def run_before(specs: Sequence[ModelSpec], study: StudyInput) -> list[EngineResult]:
    """Run the engines a family reads (``Case.before``) in order, each given the results of the
    ones before it, as a pipeline would; each engine is freed after its run. Raises on a
    failure (the caller names the step)."""
    results: list[EngineResult] = []
    prompt, study.prompt = study.prompt, None  # they run as pipeline steps, without a question
    try:
        for spec in specs:
            engine = load_engine(build(spec))
            study.earlier = list(results)
            result = engine.run(study)
            del engine
            if not isinstance(result, EngineResult):
                raise ContractError(f"{spec.family}@{spec.version} returned "
                                    f"{type(result).__name__}, not an EngineResult")
            results.append(result)
    finally:
        study.prompt, study.earlier = prompt, []
        gc.collect()
    return results


# ---------------------------------------------------------------------------- memory

def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _maxrss() -> int:
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _hwm() is not None
    except OSError:
        return False


def _hwm() -> int | None:
    """The resident high-water mark (VmHWM) in bytes, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _MemorySampler:
    """Peak resident memory over a stretch of code, sampled from /proc/self/statm by a thread;
    without /proc, the growth of the process's lifetime peak (``getrusage``), which misses a
    peak that stays below an earlier one."""

    def __init__(self) -> None:
        self.base = _rss()
        self.peak = self.base
        # Linux keeps the peak itself (VmHWM); resetting it first makes it this stretch's peak,
        # which a sampler could miss when the memory is held for a moment only
        self._hwm = _reset_hwm()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._maxrss_before = _maxrss()

    def __enter__(self) -> _MemorySampler:
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, name="validate-rss",
                                            daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._take()

    def _take(self) -> None:
        now = _rss()
        if self._hwm:
            hwm = _hwm()
            now = max(now or 0, hwm or 0) or None
        if now is not None and (self.peak is None or now > self.peak):
            self.peak = now

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._take()

    @property
    def growth(self) -> int:
        lifetime = max(0, _maxrss() - self._maxrss_before)
        if self.base is None or self.peak is None:
            return lifetime
        # a new lifetime peak is a peak of this stretch even when the sampler missed it
        return max(self.peak - self.base, lifetime, 0)


class _GpuPeak:
    """CUDA memory allocated at its peak during a stretch, above what was allocated before."""

    def __init__(self, device: str) -> None:
        self.device = device if device.startswith("cuda") else None
        self.base: int | None = None
        self.peak: int | None = None

    def __enter__(self) -> _GpuPeak:
        if self.device is None:
            return self
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                self.base = int(torch.cuda.memory_allocated(self.device))
        except Exception:  # a device that does not exist: the engine's build says so
            self.base = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.base is None:
            return
        try:
            import torch

            torch.cuda.synchronize(self.device)
            self.peak = max(0, int(torch.cuda.max_memory_allocated(self.device)) - self.base)
        except Exception:
            self.peak = None


def _free(cuda: bool) -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and (cuda or torch.cuda.is_initialized()):
        try:
            torch.cuda.empty_cache()
        except Exception:  # nothing to free on a machine without CUDA
            pass


# ---------------------------------------------------------------------------- checks

def _check(checks: list[dict[str, Any]], name: str, ok: bool, detail: str) -> None:
    checks.append({"check": name, "passed": bool(ok), "detail": detail})


def _sentences(result: EngineResult) -> int:
    return sum(len(t.sentences) for t in result.text)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _find_measurement(result: EngineResult, name: str, lead: str | None
                      ) -> tuple[Measurement | None, int]:
    hits = [m for m in result.measurements if m.name == name and m.where.lead == lead]
    return (hits[0] if hits else None), len(hits)


def check_result(result: Any, spec: ModelSpec, expect: Mapping[str, Any]
                 ) -> list[dict[str, Any]]:
    """Every check of ``result`` against the generic contract and ``expect``."""
    checks: list[dict[str, Any]] = []
    if not isinstance(result, EngineResult):
        _check(checks, "result", False,
               f"run() returned {type(result).__name__}, not an EngineResult")
        return checks
    _check(checks, "result", True, "an EngineResult")
    model = result.model
    _check(checks, "family", model.family == spec.family,
           f"result of family {model.family!r}, spec {spec.family!r}")
    _check(checks, "version", model.version == spec.version,
           f"result of version {model.version!r}, spec {spec.version!r}")
    if spec.variant == "reference":
        _check(checks, "trained", result.trained is False,
               f"a reference variant (random weights) must say trained=False; it says "
               f"{result.trained}")
    elif spec.variant == "checkpoint":
        _check(checks, "trained", result.trained is True,
               f"a checkpoint variant (registered weights) must say trained=True; it says "
               f"{result.trained}")
    counts = {"measurements": len(result.measurements), "findings": len(result.findings),
              "regions": len(result.regions), "text": _sentences(result)}
    for kind in expect.get("outputs", []):
        n = counts[kind]
        what = "sentences" if kind == "text" else kind
        _check(checks, f"outputs.{kind}", n > 0,
               f"{n} {what}" + ("" if n else f"; the family always gives {what} on this case"))
    for name, ref in expect.get("measurements", {}).items():
        lead = ref.get("lead")
        label = f"measurement.{name}" + (f"[{lead}]" if lead else "")
        m, n = _find_measurement(result, name, lead)
        where = f" in lead {lead}" if lead else " (not per lead)"
        if m is None:
            others = sorted({x.name for x in result.measurements})
            _check(checks, label, False,
                   f"no measurement {name!r}{where}; the result has "
                   f"{', '.join(others[:12]) or 'none'}" + (" ..." if len(others) > 12 else ""))
            continue
        value, target, tol = float(m.value), float(ref["value"]), float(ref["tolerance"])
        unit = ref.get("unit")
        if unit is not None and m.unit != unit:
            _check(checks, label, False, f"{name} is in {m.unit!r}, the reference in {unit!r}")
            continue
        ok = math.isfinite(value) and abs(value - target) <= tol
        u = f" {m.unit}" if m.unit not in ("1", "") else ""
        more = f" (first of {n})" if n > 1 else ""
        _check(checks, label, ok,
               f"{_fmt(value)}{u}{more}, reference {_fmt(target)} ± {_fmt(tol)}{u}"
               + ("" if ok else f": off by {_fmt(abs(value - target))}{u}"))
    for code, state in expect.get("findings", {}).items():
        got = [f.state for f in result.findings if f.code.value == code]
        _check(checks, f"finding.{code}", state in got,
               f"{code} {'/'.join(got) if got else 'not reported'}, expected {state}")
    for key in expect.get("raw", []):
        val = result.raw.get(key)
        present = val is not None and (not hasattr(val, "__len__") or len(val) > 0)
        _check(checks, f"raw.{key}", present,
               f"raw[{key!r}] " + ("present" if present else "is missing or empty"))
    return checks


def _summary(result: Any) -> dict[str, Any]:
    if not isinstance(result, EngineResult):
        return {}
    return {"findings": len(result.findings), "measurements": len(result.measurements),
            "regions": len(result.regions), "sentences": _sentences(result),
            "trained": result.trained, "model": result.model.to_dict(),
            "warnings": list(result.warnings)}


# ---------------------------------------------------------------------------- validate

def validate(spec: ModelSpec, study: StudyInput, expect: Mapping[str, Any],
             manifest: Manifest | None = None, before: Sequence[EngineResult] = ()
             ) -> ValidationOutcome:
    """Build, load and run ``spec`` on ``study`` in a fresh engine and check the result against
    ``expect``; see the module docstring. ``before`` are the results the family reads
    (``study.earlier``)."""
    expect = check_expect(expect)
    checks: list[dict[str, Any]] = []
    load_s: float | None = None
    run_s: float | None = None
    result: Any = None
    error: str | None = None
    engine: Any = None
    cuda = str(spec.device or "").startswith("cuda")
    with _MemorySampler() as memory, _GpuPeak(spec.device or "cpu") as gpu:
        step = "manifest"
        try:
            if manifest is not None:
                if not spec.weights_path:
                    raise ContractError("a manifest was given but the spec has no weights path")
                verify_manifest(Path(spec.weights_path), manifest)
                _check(checks, "manifest", True,
                       f"{len(manifest.files)} file(s) match the registered manifest")
            step = "build"
            engine = build(spec)
            step = "load"
            started = time.perf_counter()
            load_engine(engine)
            load_s = time.perf_counter() - started
            _check(checks, "load", True, f"loaded in {load_s:.3f} s")
            step = "run"
            study.earlier = list(before)
            started = time.perf_counter()
            result = engine.run(study)
            run_s = time.perf_counter() - started
            _check(checks, "run", True, f"ran in {run_s:.3f} s")
        except Exception as exc:  # a model failure is an outcome, not an exception
            error = describe_error(exc)
            _check(checks, step, False, error)
    del engine
    _free(cuda)
    if error is None:
        checks.extend(check_result(result, spec, expect))
        first = next((c for c in checks if not c["passed"]), None)
        if first is not None:
            error = f"{first['check']}: {first['detail']}"
    return ValidationOutcome(passed=error is None, load_seconds=load_s, run_seconds=run_s,
                             peak_memory_bytes=memory.growth, peak_gpu_bytes=gpu.peak,
                             error=error, checks=checks, summary=_summary(result))
