"""The engine runtime in a worker: an engine is built once per family, version and weights and
reused; the next job after an activation runs the new version; a folder checkpoint is verified
file by file before it loads, and a strict load that fails names the keys. Jobs run in this
process through ``runner.execute``, the worker's own code path."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import select

from tests.pipeline.conftest import CT_SMALL, complete_now, store
from tests.registry.support import activate_now, site_case, validate_now

REPORTER_RULES = [{"name": "ct-report", "domain": "ct", "modality": ["CT"],
                   "pipeline": ["technical", "test-reporter"], "queue": "ct"}]
CONFIG = {
    "classes": {"SNOMED:427359005": ["Pulmonary nodule", "present"],
                "SNOMED:60046008": ["Pleural effusion", "absent"]},
    "report": [
        {"text": "A pulmonary nodule is seen.", "findings": [["SNOMED:427359005", "present"]]},
        {"text": "No pleural effusion.", "findings": [["SNOMED:60046008", "absent"]]},
        {"text": "There is a pneumothorax.", "findings": [["SNOMED:36118008", "present"]]},
        {"text": "Pleural effusion on the right.", "findings": [["SNOMED:60046008", "present"]]},
    ],
}


@pytest.fixture
def runtime(medgate, monkeypatch, tmp_path):
    """MedGate with the test-reporter plugin, a model folder and a rule that requires it."""
    from app.config import reset_settings
    from app.db.session import session_scope
    from app.pipeline import routes_store

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("MEDGATE_MODEL_DIR", str(models))
    monkeypatch.setenv("MEDGATE_ENGINE_PLUGINS", "tests.plugins.report_engine")
    reset_settings()
    with session_scope() as s:
        routes_store.replace(s, REPORTER_RULES)
    site_case(models, "test-reporter", CT_SMALL, "ct")
    yield models
    from app.pipeline.runner import engine_cache

    engine_cache().drop()


def checkpoint(folder, seed=0, rename=None):
    """A two-shard safetensors folder of the reporter's tree, as a hub would publish it."""
    from models.runtime.checkpoint import save_sharded
    from tests.plugins.report_engine import TinyReporter

    torch.manual_seed(seed)
    state = TinyReporter().state_dict()
    if rename:
        old, new = rename
        state[new] = state.pop(old)
    return save_sharded(state, folder, max_shard_bytes=400, config={"width": 8})


def register(version, folder, activate=True):
    from app.db.session import session_scope
    from app.registry import versions

    with session_scope() as s:
        row = versions.register(s, "test-reporter", version, weights_path=folder.name,
                                config=CONFIG)
        files = [f["path"] for f in row.manifest["files"]]
    if activate:
        activate_now("test-reporter", version)
    return files


def new_job(uid=None):
    """A job for the CT study: the first completion, then re-analyses."""
    from app.db.models import Job
    from app.db.session import session_factory
    from app.pipeline.grouping import reanalyze_study

    if uid is None:
        uid = store(CT_SMALL)
        complete_now()
        with session_factory()() as s:
            return uid, s.scalar(select(Job.id).order_by(Job.id.desc()))
    _, (job_id,) = reanalyze_study(session_factory(), uid, actor="test")
    return uid, job_id


def job(job_id):
    from app.db.models import Job
    from app.db.session import session_factory

    with session_factory()() as s:
        row = s.get(Job, job_id)
        return row.state, row.error


def draft(uid):
    from app.db.models import Report, ReportVersion, Study
    from app.db.session import session_factory

    with session_factory()() as s:
        return s.scalar(select(ReportVersion.content).join(Report).join(Study)
                        .where(Study.study_uid == uid).order_by(ReportVersion.id.desc()))


def test_an_engine_is_loaded_once_and_the_next_activation_is_used(runtime):
    from app import metrics
    from app.pipeline.runner import engine_cache, execute
    from tests.plugins import report_engine

    assert len(checkpoint(runtime / "v1")) == 2
    assert register("1", runtime / "v1") == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json"]
    before = len(report_engine.LOADS)
    uid, first = new_job()
    assert execute(first) == "done"
    _, second = new_job(uid)
    assert execute(second) == "done"
    assert report_engine.LOADS[before:] == ["1"]  # two jobs, one load
    assert [e for e in engine_cache().loaded() if e["family"] == "test-reporter"][0]["uses"] == 2

    checkpoint(runtime / "v2", seed=1)
    register("2", runtime / "v2")  # its validation loads a fresh engine of its own
    after_validation = len(report_engine.LOADS)
    _, third = new_job(uid)
    assert execute(third) == "done"
    assert report_engine.LOADS[after_validation:] == ["2"]
    held = [(e["family"], e["version"]) for e in engine_cache().loaded()]
    assert ("test-reporter", "2") in held and ("test-reporter", "1") not in held
    models = {r["model"]["family"]: r["model"] for r in draft(uid)["results"]}
    assert models["test-reporter"]["version"] == "2"
    body = metrics.render()[0].decode()
    assert 'medgate_engine_load_seconds_count{device="cpu",family="test-reporter",version="2"}' \
        in body


def test_generated_sentences_enter_the_draft_only_when_grounded(runtime):
    from app.pipeline.runner import execute

    checkpoint(runtime / "v1")
    register("1", runtime / "v1")
    uid, job_id = new_job()
    assert execute(job_id) == "done"
    d = draft(uid)["draft"]
    findings = d["sections"]["findings"]
    kept = [s for s in findings if s.get("author") == "test-reporter@1"]
    assert [s["text"] for s in kept] == ["A pulmonary nodule is seen.", "No pleural effusion."]
    assert {e["ref"] for e in kept[1]["evidence"]} == {"60046008"}
    # the composer does not state the nodule a second time in its own words
    assert not any(s["text"].startswith("Pulmonary nodule") for s in findings)
    assert [s["text"] for s in d["sections"]["impression"]] == ["Pulmonary nodule."]
    unverified = {u["text"]: u["reasons"] for u in d["unverified"]}
    assert set(unverified) == {"There is a pneumothorax.", "Pleural effusion on the right."}
    assert "no grounded source reports" in unverified["There is a pneumothorax."][0]
    assert "contradicts" in unverified["Pleural effusion on the right."][0]


def test_a_changed_shard_quarantines_the_version_and_the_job_runs_the_fallback(runtime):
    from app.db.models import ModelVersion
    from app.db.session import session_factory
    from app.pipeline.runner import execute

    shards = checkpoint(runtime / "v1")
    register("1", runtime / "v1")
    data = bytearray(shards[1].read_bytes())
    data[-1] ^= 0xFF  # one byte of the second shard, same size
    shards[1].write_bytes(bytes(data))
    uid, job_id = new_job()
    assert execute(job_id) == "done"
    with session_factory()() as s:
        row = s.scalar(select(ModelVersion).where(ModelVersion.version == "1"))
        assert row.status == "quarantined"
        assert row.status_reason.startswith("weights changed since registration: weights file "
                                            "model-00002-of-00002.safetensors changed")
    content = draft(uid)
    (warning,) = [w for w in content["draft"]["warnings"] if "quarantined" in w]
    assert warning.startswith("test-reporter@1 was quarantined (weights file "
                              "model-00002-of-00002.safetensors changed since registration")
    assert warning.endswith("test-reporter@reference ran instead")
    assert {r["model"]["version"] for r in content["results"]
            if r["model"]["family"] == "test-reporter"} == {"reference"}


def test_a_strict_load_mismatch_fails_validation_naming_the_keys(runtime):
    from app.db.session import session_scope
    from app.registry import lifecycle
    from app.registry.versions import RegistryError

    checkpoint(runtime / "v1", rename=("classifier.bias", "head.bias"))
    register("1", runtime / "v1", activate=False)
    outcome = validate_now("test-reporter", "1")
    assert outcome["state"] == "failed"
    assert "1 missing, 1 unexpected, 0 mis-shaped" in outcome["error"]
    assert "missing: classifier.bias" in outcome["error"]
    assert "unexpected: head.bias" in outcome["error"]
    with session_scope() as s:
        try:
            lifecycle.activate(s, "test-reporter", "1", "test", "try")
        except RegistryError as exc:
            assert "failed its last validation" in str(exc) and exc.status == 409
        else:
            raise AssertionError("an unvalidated version was activated")


def test_a_rule_naming_an_unknown_family_is_refused_when_saved(runtime, keys, client):
    rules = {"rules": [{**REPORTER_RULES[0], "pipeline": ["technical", "no-such-family"]}]}
    r = client.put("/api/v1/admin/routes", json=rules, headers=keys["admin"])
    assert r.status_code == 422
    assert "unknown engine family ['no-such-family']" in r.json()["detail"]
    stored = client.get("/api/v1/admin/routes", headers=keys["admin"]).json()["rules"]
    assert [x["name"] for x in stored] == ["ct-report"]  # unchanged


def test_device_and_dtype_reach_the_engine_and_a_missing_gpu_is_refused(runtime, monkeypatch):
    from app.config import reset_settings
    from app.pipeline.runner import execute

    checkpoint(runtime / "v1")
    register("1", runtime / "v1")
    # a bf16 preference stays fp32 on the CPU, where the families were validated
    monkeypatch.setenv("MEDGATE_DTYPE_BY_FAMILY", '{"test-reporter": "bf16"}')
    reset_settings()
    uid, first = new_job()
    assert execute(first) == "done"
    raw = next(r["raw"] for r in draft(uid)["results"]
               if r["model"]["family"] == "test-reporter")
    assert (raw["device"], raw["dtype"]) == ("cpu", "fp32")
    if torch.cuda.is_available():
        return  # the refusal below is for a worker without a GPU
    monkeypatch.setenv("MEDGATE_DEVICE", "cuda:0")
    reset_settings()
    _, second = new_job(uid)
    assert execute(second) == "failed"
    assert "MEDGATE_DEVICE" in job(second)[1] and "no CUDA device" in job(second)[1]
