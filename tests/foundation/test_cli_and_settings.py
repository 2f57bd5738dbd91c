"""The medgate command: keys, db, and the settings it runs with."""

import os
import subprocess
import sys

from app.config import Settings
from tests.conftest import ROOT


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_defaults_live_under_var(monkeypatch):
    for k in list(os.environ):
        if k.startswith("MEDGATE_"):
            monkeypatch.delenv(k)
    s = Settings()
    assert s.db_url.endswith("/var/medgate.db")
    assert s.store_dir.as_posix().endswith("var/store")
    assert s.celery_broker_url == "filesystem://"
    assert (s.ae_title, s.dicom_port, s.stable_seconds) == ("MEDGATE", 11112, 10.0)


def test_per_domain_stable_seconds(monkeypatch):
    monkeypatch.setenv("MEDGATE_STABLE_SECONDS_BY_DOMAIN", '{"ct": 30}')
    s = Settings()
    assert s.stable_seconds_for("ct") == 30 and s.stable_seconds_for("ecg") == 10


def test_keys_cli_create_list_revoke(medgate):
    env = dict(os.environ)
    created = run_cli("keys", "create", "--role", "clinician", "--name", "dr-who", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("mg_") and len(key) > 40 and created.stdout.strip() == key
    listed = run_cli("keys", "list", env=env)
    _, prefix, secret = key.split("_", 2)
    assert "dr-who" in listed.stdout and prefix in listed.stdout and secret not in listed.stdout
    from sqlalchemy import select

    from app.db.models import ApiKey
    from app.db.session import session_scope
    from app.security.keys import authenticate

    with session_scope() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix))
        assert authenticate(session, key).name == "dr-who"
    revoked = run_cli("keys", "revoke", str(key_id), env=env)
    assert revoked.returncode == 0, revoked.stderr
    with session_scope() as session:
        assert authenticate(session, key) is None


def test_keys_cli_rejects_unknown_role(medgate):
    r = run_cli("keys", "create", "--role", "god", "--name", "x", env=dict(os.environ))
    assert r.returncode == 2 and "unknown role" in r.stderr


def test_db_current_reports_head(medgate):
    r = run_cli("db", "current", env=dict(os.environ))
    assert r.returncode == 0 and r.stdout.strip() != "base"
