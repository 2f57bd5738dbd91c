"""Migrations go up, down and up again on SQLite and PostgreSQL, and match the models."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.db import migrate
from app.db.models import Base
from app.db.session import get_engine
from tests.conftest import configure_env


def pipelines() -> dict:
    """The stored routing rules' pipelines by rule name."""
    from app.db.session import session_scope
    from app.pipeline import routes_store

    with session_scope() as s:
        return {r.name: r.to_dict()["pipeline"] for r in routes_store.load(s)}


TABLES = {"patient", "study", "series", "instance", "job", "report", "report_version",
          "model_version", "audit_event", "api_key"}


def test_upgrade_downgrade_upgrade_round_trips(monkeypatch, tmp_path, db_url):
    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade()
    assert TABLES <= set(inspect(get_engine()).get_table_names())
    migrate.downgrade("base")
    assert migrate.current() is None
    assert not TABLES & set(inspect(get_engine()).get_table_names())
    migrate.upgrade()
    assert migrate.current() is not None
    assert TABLES <= set(inspect(get_engine()).get_table_names())


def test_newest_migration_matches_the_models(monkeypatch, tmp_path, db_url):
    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade()
    with get_engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_0005_makes_merl_optional_in_the_shipped_ecg_rules_only(monkeypatch, tmp_path, db_url):

    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade("0005")
    migrate.downgrade("0004")  # the rules as MedGate shipped them before 0005

    assert pipelines()["ecg-waveform"] == ["technical", "ecg-measure", "merl"]
    migrate.upgrade()
    after = pipelines()
    assert after["ecg-waveform"] == after["ecg-modality"] == [
        "technical", "ecg-measure", {"family": "merl", "required": False}]
    assert after["ct"] == ["technical", "ct-quant", {"family": "ct-assistant", "required": False}]


def test_0007_adds_promptmrg_as_optional_to_the_shipped_cxr_rules(monkeypatch, tmp_path, db_url):

    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade()  # the rules are seeded from the code, which holds the newest pipelines
    migrate.downgrade("0006")  # the chest rules as MedGate shipped them before 0007

    assert pipelines()["cxr-chest"] == ["technical"]
    migrate.upgrade("0007")
    after = pipelines()
    assert after["cxr-chest"] == after["cxr-description"] == after["cxr-view"] == [
        "technical", {"family": "promptmrg", "required": False}]
    assert after["ct"] == ["technical"]


def test_0008_adds_libra_after_promptmrg_unless_an_administrator_changed_the_rule(
        monkeypatch, tmp_path, db_url):
    from app.db.session import session_scope
    from app.pipeline import routes_store

    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade()
    migrate.downgrade("0007")

    with session_scope() as s:  # a site made its own cxr-view rule
        rules = [r.to_dict() for r in routes_store.load(s)]
        for r in rules:
            if r["name"] == "cxr-view":
                r["pipeline"] = ["technical"]
        routes_store.replace(s, rules)
    migrate.upgrade()
    after = pipelines()
    assert after["cxr-chest"] == after["cxr-description"] == [
        "technical", {"family": "promptmrg", "required": False},
        {"family": "libra", "required": False}]
    assert after["cxr-view"] == ["technical"]
    assert after["ct"] == ["technical", "ct-quant", {"family": "ct-assistant", "required": False}]


def test_0010_adds_ct_and_slide_pipelines_unless_an_administrator_changed_the_rule(
        monkeypatch, tmp_path, db_url):
    from app.db.session import session_scope
    from app.pipeline import routes_store

    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade()
    migrate.downgrade("0009")

    before = pipelines()
    assert before["ct"] == before["pathology-wsi"] == before["pathology-sm"] == ["technical"]
    with session_scope() as s:  # a site chose its own slide pipeline
        rules = [r.to_dict() for r in routes_store.load(s)]
        for r in rules:
            if r["name"] == "pathology-sm":
                r["pipeline"] = ["technical", "medplib"]
        routes_store.replace(s, rules)
    migrate.upgrade()
    after = pipelines()
    assert after["ct"] == ["technical", "ct-quant", {"family": "ct-assistant", "required": False}]
    assert after["pathology-wsi"] == ["technical", "slide-quant"]
    assert after["pathology-sm"] == ["technical", "medplib"]
    migrate.downgrade("0009")
    assert pipelines()["ct"] == ["technical"] and pipelines()["pathology-wsi"] == ["technical"]


def test_0012_keeps_the_active_version_active_and_frees_the_old_retired_ones(
        monkeypatch, tmp_path, db_url):
    """Before 0012 an activation marked the previous version "retired"; that status is final
    now, so those versions become registered, and the active one gets an every-rule
    assignment."""
    from sqlalchemy import text

    configure_env(monkeypatch, tmp_path / "var", db_url)
    migrate.upgrade("0011")
    with get_engine().begin() as conn:
        for version, status in (("1", "retired"), ("2", "active")):
            conn.execute(text(
                "INSERT INTO model_version (family, version, variant, status, config, "
                "created_at) VALUES ('promptmrg', :v, 'checkpoint', :s, '{}', "
                "CURRENT_TIMESTAMP)"), {"v": version, "s": status})
    migrate.upgrade()
    with get_engine().connect() as conn:
        status = dict(conn.execute(text(
            "SELECT version, status FROM model_version ORDER BY version")).fetchall())
        open_rows = conn.execute(text(
            "SELECT a.family, a.rule, a.role, v.version FROM model_assignment a JOIN "
            "model_version v ON v.id = a.version_fk WHERE a.ended_at IS NULL")).fetchall()
    assert status == {"1": "registered", "2": "active"}
    assert [tuple(r) for r in open_rows] == [("promptmrg", "", "active", "2")]
