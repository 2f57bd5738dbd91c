"""The validation study of a model family, and validating a version on it.

A family's case (``models.validation``) is looked up in ``<MEDGATE_MODEL_DIR>/validation`` first
(a site's own plugin family, or its own case for a built-in one), then among the cases bundled
with MedGate. ``run_validation`` is what the worker calls for a registered version: the case's
study (DICOM headers read as the pipeline reads them), the families the version reads run first
with their default specs on the same device, then ``models.runtime.validate.validate``. A model
failure comes back as an outcome with ``passed=False``; ``CaseError`` (no case for the family, a
malformed case.json) is raised unchanged.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from app.config import get_settings
from app.dicom.headers import read_header
from app.registry.defaults import default_spec
from models.base import ModelSpec, StudyInput
from models.runtime.manifest import Manifest
from models.runtime.validate import (
    ValidationOutcome,
    describe_error,
    failed,
    run_before,
    study_for,
    validate,
)
from models.validation import Case, CaseError, case_for

__all__ = ["CaseError", "run_validation", "site_cases_dir", "validation_study"]


def site_cases_dir() -> Path:
    """Where a site ships its own validation cases: ``<models_dir>/validation``."""
    return get_settings().models_dir / "validation"


def validation_study(family: str, output_dir: Path | None = None,
                     ) -> tuple[Case, StudyInput]:
    """The case of ``family`` and its StudyInput (with the prompt when the case gives the
    family one). A file whose header cannot be read is a malformed case (CaseError)."""
    case = case_for(family, [site_cases_dir()])
    metadata = []
    for path in case.files:
        try:
            metadata.append(read_header(path))
        except ValueError as exc:
            raise CaseError(f"case {case.name} ({case.folder}): {path.name}: {exc}") from exc
    return case, study_for(case, metadata, output_dir, family=family)


def run_validation(spec: ModelSpec, manifest: Manifest | None = None,
                   output_dir: Path | None = None) -> ValidationOutcome:
    """Validate ``spec`` on its family's case (see the module docstring). Files the engines
    write (masks) go to ``output_dir``, else to a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="medgate-validate-") as scratch:
        case, study = validation_study(spec.family, Path(output_dir or scratch))
        first = case.before_for(spec.family)
        before = []
        if first:
            specs = [replace(default_spec(f), device=spec.device) for f in first]
            try:
                before = run_before(specs, study)
            except Exception as exc:  # the version under validation was not reached
                names = ", ".join(f"{s.family}@{s.version}" for s in specs)
                outcome = failed(f"{names} (run before {spec.family} on case {case.name}) "
                                 f"failed: {describe_error(exc)}", "before")
                outcome.summary["case"] = case.name
                return outcome
        outcome = validate(spec, study, case.expect_for(spec.family), manifest, before)
        outcome.summary["case"] = case.name
        if first:
            outcome.summary["before"] = list(first)
        return outcome
