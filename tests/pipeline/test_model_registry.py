"""Model versions: registration records the checksum, activation picks what the pipeline runs,
and weights that changed afterwards fail the job with a reason instead of loading."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.pipeline.conftest import ECG, complete_now, job_states, store


def test_register_activate_and_resolve(medgate, monkeypatch, tmp_path):
    from app.db.session import session_scope
    from app.registry.versions import RegistryError, activate, register, resolve_spec

    models = tmp_path / "weights"
    models.mkdir()
    monkeypatch.setenv("MEDGATE_MODEL_DIR", str(models))
    from app.config import reset_settings

    reset_settings()
    (models / "merl_v1.pth").write_bytes(b"first")
    (models / "merl_v2.pth").write_bytes(b"second")
    with session_scope() as s:
        assert resolve_spec(s, "merl").variant == "reference"
        v1 = register(s, "merl", "1", weights_path="merl_v1.pth")
        register(s, "merl", "2", weights_path="merl_v2.pth")
        assert len(v1.sha256) == 64
        with pytest.raises(RegistryError, match="unknown model family"):
            register(s, "no-such-family", "1")
        with pytest.raises(RegistryError, match="do not exist"):
            register(s, "merl", "3", weights_path="missing.pth")
        with pytest.raises(RegistryError, match="already registered"):
            register(s, "merl", "1", weights_path="merl_v1.pth")
        activate(s, "merl", "1")
        activate(s, "merl", "2")
    with session_scope() as s:
        spec = resolve_spec(s, "merl")
        assert (spec.version, spec.variant) == ("2", "checkpoint")
        assert spec.weights_path == str(models / "merl_v2.pth")
        activate(s, "merl", "1")  # roll back
    with session_scope() as s:
        assert resolve_spec(s, "merl").version == "1"
    (models / "merl_v1.pth").write_bytes(b"tampered")
    with session_scope() as s, pytest.raises(RegistryError, match="changed"):
        activate(s, "merl", "1")


def test_changed_weights_are_refused_by_name(medgate, monkeypatch, tmp_path):
    """MERL is optional in the default ECG rules: weights changed on disk skip it with a
    warning naming the file; with a rule that requires it, the job fails with that reason."""
    from app.config import reset_settings
    from app.db.models import Job, ReportVersion
    from app.db.session import session_factory, session_scope
    from app.pipeline import routes_store
    from app.pipeline.runner import execute
    from app.registry.versions import activate, register

    monkeypatch.setenv("MEDGATE_MODEL_DIR", str(tmp_path))
    reset_settings()
    (tmp_path / "merl.pth").write_bytes(b"weights as registered")
    with session_scope() as s:
        register(s, "merl", "9", weights_path="merl.pth", config={})
        activate(s, "merl", "9")
    (tmp_path / "merl.pth").write_bytes(b"WEIGHTS AS REGISTERED")  # same size, other bytes
    uid = store(ECG)
    complete_now()
    with session_factory()() as s:
        job_id = s.scalar(select(Job.id))
    assert execute(job_id) == "done"
    with session_factory()() as s:
        draft = s.scalar(select(ReportVersion.content))["draft"]
    (warning,) = [w for w in draft["warnings"] if "merl" in w]
    assert warning.startswith("optional engine merl@9 was skipped: weights file merl.pth "
                              "changed since registration: sha256")

    with session_scope() as s:
        routes_store.replace(s, [{"name": "ecg-strict", "domain": "ecg", "modality": ["ECG"],
                                  "pipeline": ["technical", "ecg-measure", "merl"]}])
    from app.pipeline.grouping import reanalyze_study

    how, (second,) = reanalyze_study(session_factory(), uid, actor="test")
    assert how == "reanalysed"
    assert execute(second) == "failed"
    assert job_states(uid) == ["done", "failed"]
    with session_factory()() as s:
        error = s.get(Job, second).error
    assert error.startswith("engine merl@9 failed: weights file merl.pth changed since "
                            "registration")
