"""Viewer fixtures: a real uvicorn server whose MEDGATE_PUBLIC_URL is its own address (the
viewer fetches the BulkDataURIs /metadata hands out), sign-in helpers, and a stand-in OHIF
package for the tests that need its layout but not its 200 MB."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import loopback_socket, role_keys, serve_in_thread


@pytest.fixture(autouse=True)
def _forget_settings() -> Iterator[None]:
    """Tests here change MEDGATE_* variables; no later test may see settings cached from
    them (set up first, so this runs after monkeypatch has put the environment back)."""
    yield
    from app.config import reset_settings

    reset_settings()


@dataclass
class Live:
    url: str
    keys: dict[str, dict[str, str]]

    def key(self, role: str) -> str:
        return self.keys[role]["Authorization"].split(" ", 1)[1]


@pytest.fixture
def live_viewer(medgate, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """MedGate served by uvicorn on a free loopback port, in a thread of this process; its
    public URL is its own address (the viewer follows the absolute BulkDataURIs)."""
    from app.config import reset_settings

    sock = loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MEDGATE_PUBLIC_URL", url)
    reset_settings()
    keys = role_keys()
    with serve_in_thread(sock):
        yield Live(url, keys)


# A stand-in for the unpacked @ohif/app package: the same layout and the same root-relative
# paths the real build writes (index.html, a webpack runtime, a style sheet).
FAKE_INDEX = ('<!doctype html><html><head><link rel="icon" href="/assets/favicon.ico">'
              '<script src="/app-config.js"></script>'
              '<script type="module" src="/init-service-worker.js"></script>'
              '<script>window.PUBLIC_URL="/"</script>'
              '<script defer src="/app.bundle.abc.js"></script>'
              '<link href="/app.bundle.css" rel="stylesheet"></head>'
              '<body><div id="root"></div></body></html>')


@pytest.fixture
def fake_ohif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from app.config import reset_settings

    root = tmp_path / "ohif"
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (root / "package.json").write_text('{"name": "@ohif/app", "version": "0.0.0-test"}')
    (dist / "index.html").write_text(FAKE_INDEX)
    (dist / "app.bundle.abc.js").write_text(
        '(() => {\n__webpack_require__.p = "/";\n})();\nconsole.log("ohif");\n')
    (dist / "app.bundle.css").write_text("@font-face{src:url(/font.woff2)}")
    (dist / "app-config.js").write_text("window.config = {name: 'config/default.js'};")
    (dist / "decoder.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    monkeypatch.setenv("MEDGATE_VIEWER_DIR", str(root))
    reset_settings()
    return root
