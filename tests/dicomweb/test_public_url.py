"""Response URLs never copy the request's Host header (issue 10, item 10): they come from
MEDGATE_PUBLIC_URL, from X-Forwarded-* only when a trusted proxy sent them, else from the
configured listen address."""

from __future__ import annotations

import pytest

from tests.dicomweb.conftest import make_instance, multipart, stow_headers

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
RETRIEVE_URL = "00081190"


def _retrieve_url(client, keys) -> str:
    r = client.post("/dicomweb/studies", content=multipart([make_instance()]),
                    headers={**stow_headers(keys["pacs"]), "Host": "evil.example:666",
                             "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert r.status_code == 200, r.text
    return r.json()[RETRIEVE_URL]["Value"][0]


@SQLITE
def test_host_header_and_untrusted_forwarding_do_not_reach_response_urls(monkeypatch, medgate,
                                                                        client, keys):
    from app.config import reset_settings

    assert _retrieve_url(client, keys).startswith("http://testserver/dicomweb/studies/")
    monkeypatch.setenv("MEDGATE_PUBLIC_URL", "")
    reset_settings()
    assert _retrieve_url(client, keys).startswith("http://127.0.0.1:8000/dicomweb/studies/")
    monkeypatch.setenv("MEDGATE_TRUSTED_PROXIES", "testclient")  # TestClient's peer address
    reset_settings()
    assert _retrieve_url(client, keys).startswith("https://evil.example/dicomweb/studies/")
