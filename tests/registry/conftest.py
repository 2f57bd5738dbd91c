"""Fixtures of the model life-cycle tests."""

from __future__ import annotations

import pytest

from tests.registry.support import DX, site_case

RULES = [{"name": "cxr-report", "domain": "cxr", "modality": ["DX", "CR"],
          "pipeline": ["technical", "test-reporter"], "queue": "cxr"},
         {"name": "ct-other", "domain": "ct", "modality": ["CT"], "pipeline": ["technical"]}]


@pytest.fixture
def admin_api(medgate, monkeypatch, tmp_path, client, keys):
    from app.config import reset_settings
    from app.db.session import session_scope
    from app.pipeline import routes_store
    from app.pipeline.runner import engine_cache

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("MEDGATE_MODEL_DIR", str(models))
    monkeypatch.setenv("MEDGATE_ENGINE_PLUGINS", "tests.plugins.report_engine")
    reset_settings()
    with session_scope() as s:
        routes_store.replace(s, RULES)
    site_case(models, "test-reporter", DX, "cxr")
    yield client, keys["admin"], models, keys
    engine_cache().drop()
