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
    created = run_cli("keys", "create", "--role", "clinician", "--name", "dr-who",
                      "--person", "Dr Who", env=env)
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


def test_models_inspect_prints_the_published_merl_trees():
    """The JSON an administrator reads before fetching weights: every key and shape of the
    released ViT-tiny tree (and the ResNet one through --config), as a strict load needs them."""
    import json

    import torch

    from models.ecg.merl import CHECKPOINT_CONFIG
    from models.ecg.merl_net import MerlModel

    def inspect(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "app.cli", "models", "inspect", "merl",
                              *args, "--json"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    vit = inspect("--variant", "checkpoint")
    assert (vit["family"], vit["variant"], vit["config"]) == ("merl", "checkpoint", "vit_tiny")
    assert len(vit["keys"]) == 367 and vit["parameters"] == 115_432_576
    with torch.device("meta"):
        expected = MerlModel({**CHECKPOINT_CONFIG, "ecg_model": "vit_tiny"}).state_dict()
    assert vit["keys"] == {k: list(v.shape) for k, v in expected.items()}
    resnet = inspect("--config", "resnet18")
    assert resnet["config"] == "resnet18" and len(resnet["keys"]) == 337
    assert resnet["keys"]["ecg_encoder.conv1.weight"] == [64, 12, 7]
    bad = subprocess.run([sys.executable, "-m", "app.cli", "models", "inspect", "merl",
                          "--config", "vit_huge"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "vit_tiny" in bad.stderr
