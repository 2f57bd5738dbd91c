"""FastAPI app factory: mounts the routers; the lifespan starts the DICOM SCP and the embedded
worker when `medgate serve` asks for them. /docs (Swagger UI) and /redoc load their scripts and
styles from MedGate itself, never from a CDN, so they work on a network without the internet."""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api import (
    admin,
    asks,
    destinations,
    dicomweb,
    ecg,
    health,
    kb,
    model_versions,
    peers,
    reports,
    session,
    studies,
    system,
    viewer,
)
from app.api.openapi import install as install_openapi
from app.api.problems import install as install_problems
from app.config import get_settings

ROUTERS = [health.router, system.router, admin.router, studies.router, asks.router,
           reports.router, dicomweb.router, kb.router, ecg.router, peers.router,
           destinations.router, model_versions.router, session.router, viewer.router]

# Swagger UI 5 and ReDoc 2 as the pinned fastapi-offline package ships them (MIT; the bundles
# are Apache-2.0 and MIT), served under this path.
DOCS_ASSETS = "/docs-assets"


def _install_docs(app: FastAPI) -> None:
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")),
              name="docs-assets")

    def root(request: Request) -> str:  # as FastAPI's own pages: behind a path prefix too
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=base + app.openapi_url, title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=base + app.swagger_ui_oauth2_redirect_url,
            swagger_js_url=f"{base}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io

    @app.get(app.swagger_ui_oauth2_redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(openapi_url=base + app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{base}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{base}{DOCS_ASSETS}/favicon.png",
                              with_google_fonts=False)


def create_app(start_services: bool = False) -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        settings.ensure_dirs()
        services = None
        if start_services:
            from app.services import Services

            services = Services(settings)
            services.start()
        try:
            yield
        finally:
            if services is not None:
                services.stop()

    app = FastAPI(title="MedGate", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    _install_docs(app)
    install_problems(app)
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    return app
