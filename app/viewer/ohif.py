"""The prebuilt OHIF viewer (`@ohif/app`, MIT) that `make viewer` unpacks, served under a path.

The package is built for the site root: its index.html, style sheets and webpack runtimes name
their files at absolute ``/...`` paths (``__webpack_require__.p = "/"``). Served under
``/viewer/`` those paths are rewritten as the files are read (once per file, then kept in
memory), so the package stays exactly as npm shipped it. Its ``app-config.js`` is replaced by
one MedGate generates: OHIF reads MedGate's own DICOMweb on the page's origin, so the browser
sends the session cookie and no CORS is needed.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

ENTRY = "index.html"
# Suffixes whose text may name files at absolute paths; the rest is served as it is.
TEXT_SUFFIXES = {".html", ".css", ".js", ".json"}
MEDIA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
               ".html": "text/html; charset=utf-8", ".json": "application/json",
               ".wasm": "application/wasm", ".svg": "image/svg+xml", ".woff2": "font/woff2",
               ".map": "application/json"}
# The webpack runtime's public path, as the production build writes it in each bundle with a
# runtime of its own (the app and its workers).
_PUBLIC_PATH = '__webpack_require__.p = "/";'
# The service worker would cache the viewer's files and images under root paths; not wanted.
_SERVICE_WORKER = re.compile(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>')
_HTML_PATH = re.compile(r'((?:href|src)=")/(?!/)')
_CSS_PATH = re.compile(r"url\(/(?!/)")
_JSON_PATH = re.compile(r'("(?:src|url|start_url)"\s*:\s*")/(?!/)')


@dataclass(frozen=True)
class Package:
    """An unpacked ``@ohif/app``: ``root`` holds package.json and dist/."""

    root: Path

    @property
    def dist(self) -> Path:
        return self.root / "dist"

    @property
    def installed(self) -> bool:
        return (self.dist / ENTRY).is_file()

    @property
    def version(self) -> str:
        try:
            return str(json.loads((self.root / "package.json").read_text()).get("version", ""))
        except (OSError, ValueError):
            return ""

    def file(self, rel: str) -> Path | None:
        """The file ``rel`` names inside dist/, or None (absent, a folder, or outside)."""
        if not rel or "\x00" in rel:
            return None
        dist = self.dist.resolve()
        try:
            path = (dist / rel).resolve()
        except (OSError, ValueError):
            return None
        if not path.is_relative_to(dist) or not path.is_file():
            return None
        return path


def media_type(path: Path) -> str | None:
    return MEDIA_TYPES.get(path.suffix.lower())


def rewrite(text: str, suffix: str, base: str) -> str:
    """``text`` of a file with ``suffix`` whose absolute paths now start at ``base`` (ends
    with a slash, e.g. ``/viewer/``)."""
    if suffix == ".html":
        text = _SERVICE_WORKER.sub("", text)
        text = _HTML_PATH.sub(lambda m: m.group(1) + base, text)
        return text.replace('window.PUBLIC_URL="/"', f"window.PUBLIC_URL={json.dumps(base)}")
    if suffix == ".css":
        return _CSS_PATH.sub("url(" + base, text)
    if suffix == ".js":
        return text.replace(_PUBLIC_PATH, f"__webpack_require__.p = {json.dumps(base)};")
    if suffix == ".json":
        return _JSON_PATH.sub(lambda m: m.group(1) + base, text)
    return text


_cache: dict[tuple[str, int, int, str], bytes | None] = {}
_lock = threading.Lock()


def served_bytes(path: Path, base: str) -> bytes | None:
    """The rewritten content of a text file, or None when it needs no rewrite (serve the file
    as it is). Kept per (file, size, mtime, base): each file is read and rewritten once."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return None
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, base)
    with _lock:
        if key in _cache:
            return _cache[key]
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="surrogateescape")
    new = rewrite(text, path.suffix.lower(), base)
    out = None if new == text else new.encode("utf-8", errors="surrogateescape")
    with _lock:
        _cache[key] = out
    return out


def etag(path: Path, base: str) -> str:
    """A validator for a served file: its size and time, and the base its paths point at."""
    st = path.stat()
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{digest}"'


def app_config(base: str, root_path: str = "") -> str:
    """The viewer's ``app-config.js``: one DICOMweb data source, MedGate's own ``/dicomweb``
    on the page's origin (``root_path`` where MedGate is served below a path prefix)."""
    source = {
        "friendlyName": "MedGate",
        "name": "medgate",
        # set below from the page's origin: same origin, so the session cookie goes along
        "qidoRoot": "", "wadoRoot": "", "wadoUriRoot": "",
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "dicomUploadEnabled": False,
        "supportsReject": False,
        "bulkDataURI": {"enabled": True},
        "omitQuotationForMultipartRequest": True,
    }
    config = {
        "name": "medgate",
        "routerBasename": base.rstrip("/") or "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "medgate",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "medgate",
            "configuration": source,
        }],
    }
    return (
        "/* Generated by MedGate (app/viewer/ohif.py); replaces the package's app-config.js.\n"
        "   OHIF reads MedGate's own DICOMweb on this page's origin: the browser sends the\n"
        "   session cookie with each read, and no CORS is needed. */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function (source) {\n"
        f"  var root = window.location.origin + {json.dumps(root_path.rstrip('/'))} "
        "+ '/dicomweb';\n"
        "  source.qidoRoot = source.wadoRoot = source.wadoUriRoot = root;\n"
        "})(window.config.dataSources[0].configuration);\n")
