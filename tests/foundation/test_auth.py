"""Every /api and /dicomweb route needs a key with the right role; health routes need none."""

import pytest

# One representative route per router: (method, path, roles allowed besides admin).
ROUTES = [
    ("GET", "/api/v1/whoami", ("pacs", "clinician")),           # system
    ("GET", "/api/v1/admin/keys", ()),                          # admin
    ("GET", "/api/v1/admin/audit", ()),
    ("GET", "/api/v1/admin/routes", ()),
    ("GET", "/api/v1/studies", ("pacs", "clinician")),          # studies
    ("DELETE", "/api/v1/studies/1.2.3", ()),
    ("GET", "/api/v1/reports", ("clinician",)),                 # reports
    ("GET", "/api/v1/kb/entries/ecg-lbbb", ("clinician",)),     # knowledge
    ("POST", "/api/v1/ecg", ("pacs", "clinician")),             # ECG upload
    ("GET", "/dicomweb/studies", ("pacs", "clinician")),        # DICOMweb QIDO
    ("POST", "/dicomweb/studies", ("pacs",)),                   # DICOMweb STOW
]


@pytest.mark.parametrize("method,path,roles", ROUTES)
def test_route_without_key_is_401(client, method, path, roles):
    r = client.request(method, path)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path,roles", ROUTES)
def test_route_with_unknown_key_is_401(client, method, path, roles):
    r = client.request(method, path, headers={"Authorization": "Bearer mg_0000_nope"})
    assert r.status_code == 401


@pytest.mark.parametrize("method,path,roles", ROUTES)
@pytest.mark.parametrize("role", ["pacs", "clinician", "admin"])
def test_route_answers_by_role(client, keys, method, path, roles, role):
    r = client.request(method, path, headers=keys[role])
    if role == "admin" or role in roles:
        # allowed through authorisation: what follows is the route's own answer
        assert r.status_code not in (401, 403), r.text
    else:
        assert r.status_code == 403
        assert r.json()["type"] == "urn:medgate:problem:forbidden"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_routes_need_no_key(client, path):
    assert client.get(path).status_code == 200


def test_revoked_key_gets_401(client, keys):
    admin = keys["admin"]
    created = client.post("/api/v1/admin/keys", json={"role": "clinician", "name": "temp",
                                                        "person_name": "Dr Temp"},
                          headers=admin)
    assert created.status_code == 201
    body = created.json()
    header = {"Authorization": f"Bearer {body['key']}"}
    assert client.get("/api/v1/whoami", headers=header).json()["role"] == "clinician"
    assert client.delete(f"/api/v1/admin/keys/{body['id']}", headers=admin).status_code == 200
    assert client.get("/api/v1/whoami", headers=header).status_code == 401
    listed = client.get("/api/v1/admin/keys", headers=admin).json()["keys"]
    assert all("key" not in k and "key_hash" not in k for k in listed)


def test_key_management_writes_audit_events(client, keys):
    admin = keys["admin"]
    client.post("/api/v1/admin/keys", json={"role": "pacs", "name": "modality"}, headers=admin)
    events = client.get("/api/v1/admin/audit", params={"action": "key.create"},
                        headers=admin).json()["events"]
    assert any(e["detail"].get("name") == "modality" for e in events)
    assert all(e["resource_type"] == "api_key" for e in events)


def test_unknown_role_is_refused(client, keys):
    r = client.post("/api/v1/admin/keys", json={"role": "root", "name": "x"},
                    headers=keys["admin"])
    assert r.status_code == 422
    assert "unknown role" in r.json()["detail"]
