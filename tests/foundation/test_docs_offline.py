"""/docs and /redoc work without the internet (issue 10, item 10): every script, style sheet
and icon the pages load is served by MedGate itself, and no other host is named."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

CONTENT_TYPES = {"script": ("javascript",), "link": ("css", "image/")}


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.found.append((tag, value))


@pytest.fixture
def app_client(monkeypatch, tmp_path):
    from app.main import create_app
    from tests.conftest import configure_env

    configure_env(monkeypatch, tmp_path / "var", f"sqlite:///{tmp_path / 'm.db'}")
    with TestClient(create_app()) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_assets_served_by_medgate(app_client, page):
    r = app_client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    # No host is named at all: the pages use paths of this server only.
    assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", html), html
    parser = _Assets()
    parser.feed(html)
    tags = {tag for tag, _ in parser.found}
    assert "script" in tags and "link" in tags, parser.found
    for tag, url in parser.found:
        assert url.startswith("/"), url
        asset = app_client.get(url)
        assert asset.status_code == 200, url
        assert any(t in asset.headers["content-type"] for t in CONTENT_TYPES[tag]), (
            url, asset.headers["content-type"])
        assert len(asset.content) > 1000, url
    # the page's script finds the OpenAPI document on this server
    assert "/openapi.json" in html
    assert app_client.get("/openapi.json").status_code == 200


def test_swagger_ui_oauth2_redirect_page_is_local_too(app_client):
    r = app_client.get("/docs/oauth2-redirect")
    assert r.status_code == 200
    assert "http://" not in r.text and "https://" not in r.text
