"""Helpers for tests that take model versions through their life cycle the way a site does:
a validation case for the test family, validation run by the worker's own code path
(``runner.execute`` of the validation job), then the verb under test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from models.validation import __file__ as _cases_init

BUNDLED = Path(_cases_init).parent
DX = BUNDLED / "cxr-dx" / "dx_image.dcm"


def site_case(models_dir: Path, family: str, source: Path, domain: str,
              expect: dict | None = None, name: str | None = None) -> Path:
    """A site's validation case for ``family`` under ``<models_dir>/validation``."""
    folder = models_dir / "validation" / (name or f"{family}-case")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / source.name)
    (folder / "case.json").write_text(json.dumps({
        "name": folder.name, "domain": domain, "files": [source.name], "families": [family],
        "prompt": None, "expect": {family: expect or {"outputs": ["findings"]}}}))
    return folder


def validate_now(family: str, version: str, actor: str = "test") -> dict:
    """Queue the validation and run its job here, as a worker would; the validation row."""
    from app.db.models import ModelValidation
    from app.db.session import session_factory, session_scope
    from app.pipeline.runner import execute
    from app.registry import lifecycle

    with session_scope() as s:
        v = lifecycle.request_validation(s, family, version, actor)
        job_id, vid = v.job_fk, v.id
    assert execute(job_id) == "done"
    with session_factory()() as s:
        v = s.get(ModelValidation, vid)
        return {"state": v.state, "error": v.error, "checks": v.checks, "id": v.id}


def activate_now(family: str, version: str, rule: str = "", reason: str = "test") -> None:
    """Validate (it must pass) and activate."""
    from app.db.session import session_scope
    from app.registry import lifecycle

    outcome = validate_now(family, version)
    assert outcome["state"] == "passed", outcome
    with session_scope() as s:
        lifecycle.activate(s, family, version, "test", reason, rule)
