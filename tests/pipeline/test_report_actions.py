"""Every action a report offers has its endpoint (issue 10, item 10): the pipeline-only "draft"
is never offered, and "cancel" is a real action with a reason."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.pipeline.conftest import CT_SMALL, complete_now, store


def test_every_offered_action_has_an_endpoint():
    from app.main import create_app
    from app.reports.lifecycle import STATES, allowed_actions

    paths = create_app().openapi()["paths"]
    routes = {(m.upper(), path) for path, ops in paths.items() for m in ops}
    for state in STATES:
        for action in allowed_actions(state):
            wanted = (("PATCH", "/api/v1/reports/{report_id}") if action == "edit"
                      else ("POST", f"/api/v1/reports/{{report_id}}/{action}"))
            assert wanted in routes, (state, action)
    assert "draft" not in allowed_actions("draft")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_draft_is_cancelled_with_a_reason(client, keys):
    from app.db.models import Job
    from app.db.session import session_factory
    from app.pipeline.runner import execute

    store(CT_SMALL)
    complete_now()
    with session_factory()() as s:
        assert execute(s.scalar(select(Job.id))) == "done"
    clin = keys["clinician"]
    (item,) = client.get("/api/v1/reports", headers=clin).json()["reports"]
    report = client.get(f"/api/v1/reports/{item['id']}", headers=clin)
    assert "cancel" in report.json()["allowed_actions"]
    etag = report.headers["ETag"]
    url = f"/api/v1/reports/{item['id']}/cancel"
    assert client.post(url, headers={**clin, "If-Match": etag}).status_code == 422
    done = client.post(url, json={"reason": "duplicate order"},
                       headers={**clin, "If-Match": etag})
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["state"], body["fhir_status"], body["allowed_actions"]) == (
        "cancelled", "cancelled", [])
    assert body["versions"][-1]["reason"] == "duplicate order"

