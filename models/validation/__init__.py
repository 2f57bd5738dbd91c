"""Validation studies: one small real case per model family, shipped with the project.

Before a registered model version is activated, a worker loads it strictly and runs it on its
family's case (``models.runtime.validate``); the case's ``expect`` says what the version must
produce there to pass. Each case is a folder holding its data files and a ``case.json``:

```json
{"name": "ecg-12lead", "domain": "ecg", "files": ["waveform_ecg.dcm"],
 "families": ["ecg-measure", "merl"], "prompt": null,
 "expect": {"ecg-measure": {"outputs": ["measurements", "findings"],
                            "measurements": {"heart_rate": {"value": 61.1, "tolerance": 5,
                                                            "unit": "/min"}}}}}
```

- ``prompt``: a ``models.base.Prompt`` dict (or null), given to the families listed in
  ``prompted`` (optional; every family of the case when absent): MedPLIB answers a question and
  has no study-level task, while the report generators of the same case run without one.
- ``before``: ``{family: [families]}`` (optional), run first with their default specs and handed
  to the family as ``StudyInput.earlier`` (the CT assistant reads ct-quant's key slices).
- ``expect``: per family (a family without an entry gets the generic checks only):
  ``outputs`` (the kinds that must be non-empty: measurements, findings, regions, text),
  ``measurements`` (``{name: {"value", "tolerance", "unit"?, "lead"?}}``, reference values),
  ``findings`` (``{code value: state}``) and ``raw`` (keys of ``EngineResult.raw`` that must be
  present and non-empty).

``case_for(family, extra_dirs)`` looks in ``extra_dirs`` first (a site ships
``<MEDGATE_MODEL_DIR>/validation/<case>/case.json`` for its own plugin family, or its own case
for a built-in family), then in the bundled cases, each folder in name order; the first case
that names the family is its case. This package reads only files: it never imports ``app``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from models.base import DOMAINS, FINDING_STATES, ContractError, Prompt

BUNDLED = Path(__file__).resolve().parent
CASE_FILE = "case.json"
KEYS = {"name", "domain", "files", "families", "prompt", "prompted", "before", "expect"}
REQUIRED = ("name", "domain", "files", "families")
OUTPUT_KINDS = ("measurements", "findings", "regions", "text")
EXPECT_KEYS = {"outputs", "measurements", "findings", "raw"}
MEASUREMENT_KEYS = {"value", "tolerance", "unit", "lead"}


class CaseError(ValueError):
    """No validation case for a family, or a case.json that is malformed."""


@dataclass(frozen=True)
class Case:
    """One validation study: its files (absolute paths, in case.json order) and what each of
    its families must produce on it."""

    name: str
    domain: str
    folder: Path
    files: tuple[Path, ...]
    families: tuple[str, ...]
    prompt: Prompt | None = None
    before: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    expect: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    prompted: tuple[str, ...] = ()

    def expect_for(self, family: str) -> dict[str, Any]:
        """What ``family`` must produce on this case (empty: the generic checks only)."""
        return dict(self.expect.get(family, {}))

    def before_for(self, family: str) -> tuple[str, ...]:
        """The families whose results ``family`` reads, run first."""
        return tuple(self.before.get(family, ()))

    def prompt_for(self, family: str) -> Prompt | None:
        """The case's prompt when ``family`` is given it, else None (a study-level run)."""
        return self.prompt if family in self.prompted else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "domain": self.domain, "folder": str(self.folder),
                "files": [p.name if p.parent == self.folder else str(p) for p in self.files],
                "families": list(self.families),
                "prompt": self.prompt.to_dict() if self.prompt else None,
                "prompted": list(self.prompted),
                "before": {k: list(v) for k, v in self.before.items()},
                "expect": {k: dict(v) for k, v in self.expect.items()}}


def _fail(where: str, message: str) -> CaseError:
    return CaseError(f"{where}: {message}")


def _strings(where: str, key: str, value: Any, *, empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where, f"{key!r} must be a list of non-empty strings, not {value!r}")
    if not value and not empty:
        raise _fail(where, f"{key!r} must not be empty")
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise _fail(where, f"{key!r} lists {', '.join(dupes)} more than once")
    return tuple(value)


def _number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def check_expect(expect: Any, where: str = "expect") -> dict[str, Any]:
    """``expect`` of one family, checked: a mapping of the known keys with well-formed values.
    Raises CaseError naming what is wrong."""
    if not isinstance(expect, Mapping):
        raise _fail(where, f"must be a mapping, not {type(expect).__name__}")
    unknown = sorted(set(expect) - EXPECT_KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(EXPECT_KEYS)}")
    outputs = expect.get("outputs", [])
    bad = [o for o in outputs if o not in OUTPUT_KINDS] if isinstance(outputs, list) else outputs
    if not isinstance(outputs, list) or bad:
        raise _fail(where, f"'outputs' must list kinds of {list(OUTPUT_KINDS)}, not {bad!r}")
    measurements = expect.get("measurements", {})
    if not isinstance(measurements, Mapping):
        raise _fail(where, "'measurements' must map measurement names to "
                           "{value, tolerance}")
    for name, ref in measurements.items():
        at = f"{where}: measurement {name!r}"
        if not isinstance(ref, Mapping):
            raise CaseError(f"{at} must be {{value, tolerance}}, not {ref!r}")
        unknown = sorted(set(ref) - MEASUREMENT_KEYS)
        if unknown:
            raise CaseError(f"{at}: unknown key(s) {unknown}; allowed: "
                            f"{sorted(MEASUREMENT_KEYS)}")
        if not _number(ref.get("value")):
            raise CaseError(f"{at} needs a finite number 'value', not {ref.get('value')!r}")
        if not _number(ref.get("tolerance")) or ref["tolerance"] < 0:
            raise CaseError(f"{at} needs a 'tolerance' >= 0, not {ref.get('tolerance')!r}")
        for key in ("unit", "lead"):
            if key in ref and not (isinstance(ref[key], str) and ref[key]):
                raise CaseError(f"{at}: {key!r} must be a non-empty string")
    findings = expect.get("findings", {})
    if not isinstance(findings, Mapping) or any(
            not isinstance(k, str) or v not in FINDING_STATES for k, v in findings.items()):
        raise _fail(where, f"'findings' must map finding code values to a state of "
                           f"{list(FINDING_STATES)}, not {findings!r}")
    raw = expect.get("raw", [])
    if not isinstance(raw, list) or not all(isinstance(k, str) and k for k in raw):
        raise _fail(where, f"'raw' must list keys of the result's raw data, not {raw!r}")
    return dict(expect)


def load_case(folder: Path | str) -> Case:
    """The case of ``folder`` (its ``case.json``), checked; CaseError names what is wrong."""
    folder = Path(folder).resolve()
    path = folder / CASE_FILE
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _fail(where, "no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(where, f"cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise _fail(where, f"not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _fail(where, f"a case is a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise _fail(where, f"missing key(s) {missing}")
    name, domain = data["name"], data["domain"]
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, f"'name' must be a non-empty string, not {name!r}")
    if domain not in DOMAINS:
        raise _fail(where, f"'domain' must be one of {DOMAINS}, not {domain!r}")
    files = []
    for rel in _strings(where, "files", data["files"]):
        p = PurePosixPath(rel)
        if p.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in p.parts):
            raise _fail(where, f"file {rel!r} must be a relative path inside the case folder")
        file = folder / rel
        if not file.is_file():
            raise _fail(where, f"file {rel} does not exist in {folder}")
        files.append(file)
    families = _strings(where, "families", data["families"])
    prompt = None
    if data.get("prompt") is not None:
        if not isinstance(data["prompt"], dict):
            raise _fail(where, "'prompt' must be a Prompt object (question, language, "
                               "instance_uid, frame, point, box, mask_path) or null")
        try:
            prompt = Prompt.from_dict(data["prompt"])
        except (ContractError, TypeError) as exc:
            raise _fail(where, f"bad prompt: {exc}") from exc
        if prompt.mask_path is not None:
            raise _fail(where, "a case prompt cannot point with a mask file")
        if prompt.instance_uid is not None:
            _check_instance(where, prompt.instance_uid, files)
    prompted = families
    if "prompted" in data:
        prompted = _strings(where, "prompted", data["prompted"], empty=True)
        if prompt is None and prompted:
            raise _fail(where, "'prompted' names families but the case has no prompt")
    before_raw = data.get("before", {})
    if not isinstance(before_raw, dict):
        raise _fail(where, "'before' must map a family to the families run before it")
    before = {f: _strings(where, f"before[{f!r}]", v) for f, v in before_raw.items()}
    expect_raw = data.get("expect", {})
    if not isinstance(expect_raw, dict):
        raise _fail(where, "'expect' must map each family to what it must produce")
    expect = {f: check_expect(v, f"{where}: expect[{f!r}]") for f, v in expect_raw.items()}
    for key, named in (("prompted", prompted), ("before", before), ("expect", expect)):
        stray = sorted(set(named) - set(families))
        if stray:
            raise _fail(where, f"{key!r} names {stray}, which 'families' does not list")
    for family, first in before.items():
        if family in first:
            raise _fail(where, f"before[{family!r}] names the family itself")
    return Case(name=name.strip(), domain=domain, folder=folder, files=tuple(files),
                families=families, prompt=prompt, before=before, expect=expect,
                prompted=prompted if prompt is not None else ())


def _check_instance(where: str, uid: str, files: list[Path]) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True,
                                 specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError, EOFError):
            continue
        if str(ds.get("SOPInstanceUID", "")) == uid:
            return
    raise _fail(where, f"the prompt points at instance {uid}, which no file of the case is")


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and (p / CASE_FILE).is_file()), key=lambda p: p.name)


def cases(extra_dirs: Sequence[Path | str] = ()) -> list[Case]:
    """Every case, in search order: those of ``extra_dirs`` (each a folder of case folders;
    missing folders are skipped), then the bundled ones. A malformed case.json raises."""
    roots = [Path(d) for d in extra_dirs] + [BUNDLED]
    return [load_case(folder) for root in roots for folder in _folders(root)]


def case_for(family: str, extra_dirs: Sequence[Path | str] = ()) -> Case:
    """The validation case of ``family``: the first case naming it, ``extra_dirs`` first."""
    searched = [Path(d) for d in extra_dirs] + [BUNDLED]
    for root in searched:
        for folder in _folders(root):
            case = load_case(folder)
            if family in case.families:
                return case
    where = ", ".join(str(r) for r in searched)
    raise CaseError(f"no validation case names the family {family!r} (searched {where}); a "
                    f"site ships one as <MEDGATE_MODEL_DIR>/validation/<case>/{CASE_FILE}")
