"""FastAPI app factory: mounts the routers; the lifespan starts the DICOM SCP and the embedded
worker when `medgate serve` asks for them."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import admin, dicomweb, ecg, health, kb, reports, studies, system
from app.api.problems import install as install_problems
from app.config import get_settings

ROUTERS = [health.router, system.router, admin.router, studies.router, reports.router,
           dicomweb.router, kb.router, ecg.router]


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

    app = FastAPI(title="MedGate", version="0.1.0", lifespan=lifespan)
    install_problems(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
