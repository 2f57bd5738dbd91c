"""HTTP requests refused with 401 or 403 leave an ``auth.refused`` audit event: who (or
"anonymous"), what (method, path), from where; never the key that was presented."""

from __future__ import annotations

import json

from sqlalchemy import select, text

from app.db.models import AuditEvent
from app.db.session import session_scope


def refusals() -> list[AuditEvent]:
    with session_scope() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.refused")
                              .order_by(AuditEvent.id)))


def test_a_request_without_a_key_is_audited_as_anonymous(client):
    r = client.get("/api/v1/admin/keys")
    assert r.status_code == 401
    (event,) = refusals()
    assert (event.actor, event.outcome, event.resource_type, event.resource_id) == \
        ("anonymous", "refused", "http", "/api/v1/admin/keys")
    assert event.detail["status"] == 401 and event.detail["method"] == "GET"
    assert event.detail["path"] == "/api/v1/admin/keys"
    assert event.detail["client"] == "testclient"  # Starlette's TestClient address


def test_an_unknown_key_is_audited_and_never_stored(client):
    presented = "mg_0123456789ab_thisIsNotARealSecretButMustNotBeStoredAnywhere"
    r = client.get("/api/v1/studies", headers={"Authorization": f"Bearer {presented}"})
    assert r.status_code == 401
    (event,) = refusals()
    assert event.actor == "anonymous" and "unknown or revoked" in event.detail["reason"]
    stored = json.dumps([event.actor, event.resource_id, event.detail])
    assert presented not in stored and "thisIsNotARealSecret" not in stored


def test_a_role_refusal_is_audited_with_the_keys_actor(client, keys):
    r = client.post("/api/v1/admin/peers", json={"ae_title": "X"}, headers=keys["clinician"])
    assert r.status_code == 403
    (event,) = refusals()
    assert event.actor.startswith("key:") and event.actor.endswith(":test-clinician")
    assert event.detail["status"] == 403 and event.detail["method"] == "POST"
    assert event.detail["role"] == "clinician" and event.detail["needs"] == ["admin"]
    secret = keys["clinician"]["Authorization"].split(" ", 1)[1]
    assert secret not in json.dumps(event.detail)


def test_admin_can_read_the_refusals(client, keys):
    client.get("/api/v1/admin/audit")
    client.get("/api/v1/admin/audit", headers=keys["pacs"])
    events = client.get("/api/v1/admin/audit", params={"action": "auth.refused"},
                        headers=keys["admin"]).json()["events"]
    assert sorted(e["detail"]["status"] for e in events) == [401, 403]


def test_a_failed_audit_write_leaves_the_refusal_unchanged(client):
    with session_scope() as s:
        s.execute(text("DROP TABLE audit_event"))
    r = client.get("/api/v1/admin/keys")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
