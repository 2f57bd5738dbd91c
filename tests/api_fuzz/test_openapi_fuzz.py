"""Schemathesis against the live app's own OpenAPI document (issue 10): every operation, with
an admin key, a bounded number of generated requests (MAX_EXAMPLES, fixed seed) each; no answer
is a 5xx, and every status is one the document lists for that operation, problem+json responses
included.

The app runs on a migrated SQLite database with a key in it. Each operation's cases are drawn
with Hypothesis from schemathesis's strategy for it, inside one test, so that one report lists
every operation that fails (schemathesis's pytest fixture loader does not run on pytest 9)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 10
# 503 is these operations' documented answer while no worker runs (there is none here);
# ping also waits up to its timeout for one, so it is tested in tests/foundation/test_ping.py.
UNAVAILABLE_IS_AN_ANSWER = {"GET /readyz"}
SKIPPED = {"POST /api/v1/admin/ping"}


@pytest.fixture
def app_and_key(monkeypatch, tmp_path):
    from app.db import migrate
    from app.db.session import dispose_engines, session_scope
    from app.main import create_app
    from app.security.keys import create_key
    from tests.conftest import configure_env

    configure_env(monkeypatch, tmp_path / "var", None, public_url="http://testserver")
    migrate.upgrade()
    with session_scope() as session:
        _, key = create_key(session, "admin", "fuzz", person_name="Fuzz Tester")
    yield create_app(), {"Authorization": f"Bearer {key}"}
    dispose_engines()


def _fuzz(operation, checks, auth):
    @seed(20261202)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case) -> None:
        case.call_and_validate(headers=auth, checks=checks)

    return run


def test_no_server_error_and_no_undocumented_status(app_and_key):
    app, auth = app_and_key
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 45

    for operation in operations:
        if operation.label in SKIPPED:
            continue
        checks = [status_code_conformance] if operation.label in UNAVAILABLE_IS_AN_ANSWER \
            else [not_a_server_error, status_code_conformance]
        try:
            _fuzz(operation, checks, auth)()
        except (Exception, BaseExceptionGroup) as exc:  # collected, reported together below
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            failures[operation.label] = " | ".join(lines[1:6])[:600]
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
