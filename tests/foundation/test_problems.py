"""The framework's own errors come back as RFC 9457 problem details."""


def _is_problem(r, status):
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:medgate:problem:")
    return body


def test_unknown_path_is_problem_404(client):
    body = _is_problem(client.get("/no/such/thing"), 404)
    assert "/no/such/thing" in body["detail"]


def test_wrong_method_is_problem_405(client):
    body = _is_problem(client.delete("/healthz"), 405)
    assert "DELETE" in body["detail"]


def test_invalid_body_is_problem_422(client, keys):
    body = _is_problem(client.post("/api/v1/admin/keys", content=b"{not json",
                                   headers={**keys["admin"],
                                            "content-type": "application/json"}), 422)
    assert body["errors"]
