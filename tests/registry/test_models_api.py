"""Model versions through /api/v1/admin/models against the live app, with real model folders
(two-shard safetensors checkpoints of the test-reporter family, a plugin loaded as a site's
own family would be) on a chest-radiograph rule: every verb and its refusals, the life cycle
validate -> shadow -> activate -> rollback through the worker's code path, and the figures
signed reports give each version."""

from __future__ import annotations

import torch
from sqlalchemy import select

from tests.pipeline.conftest import complete_now, store

RULES = [{"name": "cxr-report", "domain": "cxr", "modality": ["DX", "CR"],
          "pipeline": ["technical", "test-reporter"], "queue": "cxr"},
         {"name": "ct-other", "domain": "ct", "modality": ["CT"], "pipeline": ["technical"]}]
EFFUSION, HEART, PTX = "99MEDGATE:pleural_effusion", "99MEDGATE:cardiomegaly", \
    "99MEDGATE:pneumothorax"


def config(effusion: str, heart: str) -> dict:
    """The reporter states pleural effusion and cardiomegaly as told, in findings and words."""
    words = {("pleural_effusion", "present"): "There is a pleural effusion.",
             ("pleural_effusion", "absent"): "No pleural effusion.",
             ("cardiomegaly", "present"): "The heart is enlarged.",
             ("cardiomegaly", "absent"): "Heart size is normal."}
    return {"classes": {EFFUSION: ["Pleural effusion", effusion],
                        HEART: ["Cardiomegaly", heart]},
            "report": [{"text": words[("pleural_effusion", effusion)],
                        "findings": [[EFFUSION, effusion]]},
                       {"text": words[("cardiomegaly", heart)],
                        "findings": [[HEART, heart]]}]}


def checkpoint(folder, seed=0):
    from models.runtime.checkpoint import save_sharded
    from tests.plugins.report_engine import TinyReporter

    torch.manual_seed(seed)
    save_sharded(TinyReporter().state_dict(), folder, max_shard_bytes=400, config={"width": 8})


def register(api, admin, models, version, cfg, seed=0):
    checkpoint(models / f"v{version}", seed)
    r = api.post("/api/v1/admin/models", headers=admin, json={
        "family": "test-reporter", "version": version, "weights_path": f"v{version}",
        "config": cfg, "notes": "test reporter: validated for nothing clinical"})
    assert r.status_code == 201, r.text
    return r.json()


def validate(api, admin, version):
    from app.pipeline.runner import execute

    r = api.post(f"/api/v1/admin/models/test-reporter/{version}/validate", headers=admin)
    assert r.status_code == 202, r.text
    assert execute(r.json()["job"]) == "done"  # the worker's own code path
    return api.get(r.json()["url"], headers=admin).json()


def change(api, admin, path, **body):
    return api.post(f"/api/v1/admin/models/{path}", headers=admin,
                    json={"reason": "test", **body})


def test_register_refusals_change_nothing(admin_api):
    api, admin, models, keys = admin_api
    body = register(api, admin, models, "1", config("present", "absent"))
    assert body["status"] == "registered" and body["files"] == 4
    assert len(body["manifest"]["files"]) == 4 and body["notes"].startswith("test reporter")
    cases = [
        ({"family": "no-such", "version": "1", "weights_path": "v1"}, 422, "unknown model family"),
        ({"family": "test-reporter", "version": "2", "weights_path": "nowhere"}, 422,
         "do not exist"),
        ({"family": "test-reporter", "version": "1", "weights_path": "v1"}, 409,
         "already registered"),
        ({"family": "test-reporter", "version": "5", "weights_path": "/etc"}, 422,
         "must lie inside the model folder"),
        ({"family": "test-reporter", "version": "6", "weights_path": "../.."}, 422,
         "must lie inside the model folder"),
        ({"family": "test-reporter", "version": "3", "weights_path": "v1",
          "config": {"classes": {"x": "not a pair"}}}, 422, "refuses this version"),
        ({"family": "test-reporter", "version": "4", "variant": "checkpoint"}, 422,
         "needs a weights file"),
    ]
    for payload, status, text in cases:
        r = api.post("/api/v1/admin/models", headers=admin, json=payload)
        assert r.status_code == status, (payload, r.text)
        assert text in r.json()["detail"], r.json()
    assert api.post("/api/v1/admin/models", headers=keys["clinician"],
                    json=cases[0][0]).status_code == 403
    listed = api.get("/api/v1/admin/models", headers=admin).json()
    assert [(v["family"], v["version"]) for v in listed["versions"]] == [("test-reporter", "1")]
    history = api.get("/api/v1/admin/models/test-reporter/1", headers=admin).json()["history"]
    assert [(e["action"], e["actor"].endswith(":test-admin")) for e in history] == [
        ("model.register", True)]
    assert api.get("/api/v1/admin/models/test-reporter/9", headers=admin).status_code == 404


def test_validation_gates_activation_and_every_refusal_is_specific(admin_api):
    api, admin, models, _ = admin_api
    register(api, admin, models, "1", config("present", "absent"))
    r = change(api, admin, "test-reporter/1/activate")
    assert r.status_code == 409 and "has not been validated" in r.json()["detail"]
    assert change(api, admin, "test-reporter/1/shadow").status_code == 409
    r = api.post("/api/v1/admin/models/test-reporter/1/activate", headers=admin, json={})
    assert r.status_code == 422 and "needs a reason" in r.json()["detail"]

    detail = validate(api, admin, "1")
    (run,) = detail["validations"]
    assert run["state"] == "passed" and run["case"] == "test-reporter-case", run
    assert run["load_seconds"] >= 0 and run["run_seconds"] >= 0
    assert run["peak_memory_bytes"] is not None and run["error"] is None
    assert detail["status"] == "validated"

    r = change(api, admin, "test-reporter/1/activate", rule="no-such-rule")
    assert r.status_code == 422 and "no routing rule is named" in r.json()["detail"]
    r = change(api, admin, "test-reporter/1/activate", rule="ct-other")
    assert r.status_code == 422 and "does not run test-reporter" in r.json()["detail"]
    r = change(api, admin, "test-reporter/rollback")
    assert r.status_code == 409 and "nothing to roll back" in r.json()["detail"]
    assert change(api, admin, "test-reporter/1/activate").status_code == 200
    r = change(api, admin, "test-reporter/1/activate")
    assert r.status_code == 409 and "already active" in r.json()["detail"]
    r = change(api, admin, "test-reporter/1/shadow")
    assert r.status_code == 409 and "cannot shadow itself" in r.json()["detail"]
    r = api.post("/api/v1/admin/models/test-reporter/1/retire", headers=admin,
                 json={"reason": "old"})
    assert r.status_code == 409 and "roll back first" in r.json()["detail"]

    # an activation that would leave a rule without a runnable engine: the weights are gone
    register(api, admin, models, "2", config("present", "present"), seed=1)
    assert validate(api, admin, "2")["status"] == "validated"
    import shutil

    shutil.rmtree(models / "v2")
    r = change(api, admin, "test-reporter/2/activate")
    assert r.status_code == 409 and "would have no runnable engine" in r.json()["detail"]
    assert api.get("/api/v1/admin/models/test-reporter/1", headers=admin).json()["status"] == \
        "active"

    # weights changed after registration: quarantined, not activated, and it says why
    register(api, admin, models, "3", config("absent", "absent"), seed=2)
    assert validate(api, admin, "3")["status"] == "validated"
    shard = sorted((models / "v3").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = change(api, admin, "test-reporter/3/activate")
    assert r.status_code == 409 and "quarantined" in r.json()["detail"]
    three = api.get("/api/v1/admin/models/test-reporter/3", headers=admin).json()
    assert three["status"] == "quarantined" and shard.name in three["status_reason"]
    assert three["history"][-1]["action"] == "model.quarantine"
    r = change(api, admin, "test-reporter/3/activate")
    assert r.status_code == 409 and "is quarantined" in r.json()["detail"]
    r = api.post("/api/v1/admin/models/test-reporter/3/retire", headers=admin,
                 json={"reason": "weights corrupted"})
    assert r.status_code == 200 and r.json()["status"] == "retired"
    r = change(api, admin, "test-reporter/3/shadow")
    assert r.status_code == 409 and "retired" in r.json()["detail"]


def _study_job():
    import tempfile
    from pathlib import Path

    from app.db.models import Job
    from app.db.session import session_factory
    from tests.conftest import cr_from_png, shared_file

    folder = Path(tempfile.mkdtemp())
    uid = store(cr_from_png(shared_file("cxr/00000001_000.png"), folder / "cr.dcm",
                            patient="P-REG", date="20260101", size=(256, 256)))
    complete_now()
    with session_factory()() as s:
        return uid, s.scalar(select(Job.id).where(Job.kind == "analysis")
                             .order_by(Job.id.desc()))


def _report(api, auth, uid):
    """The study's newest report (a draft after signing starts an addendum)."""
    study = api.get(f"/api/v1/studies/{uid}", headers=auth).json()
    newest = max(r["id"] for r in study["reports"])
    return api.get(f"/api/v1/reports/{newest}", headers=auth).json()


def test_shadow_activate_rollback_and_the_figures_signed_reports_give(admin_api):
    """v1 says effusion present, heart normal; v2 (shadow) says both present. The
    radiologist signs: effusion kept, heart size sentence kept, a pneumothorax added. v1's
    figures: effusion agreed, cardiomegaly agreed absent, pneumothorax missed; v2's shadow
    figures: effusion agreed, cardiomegaly a false positive, pneumothorax missed."""
    from app import metrics
    from app.pipeline.runner import execute

    api, admin, models, keys = admin_api
    register(api, admin, models, "1", config("present", "absent"))
    validate(api, admin, "1")
    assert change(api, admin, "test-reporter/1/activate").status_code == 200
    register(api, admin, models, "2", config("present", "present"), seed=1)
    validate(api, admin, "2")
    shadowing = change(api, admin, "test-reporter/2/shadow", rule="cxr-report")
    assert shadowing.status_code == 200 and shadowing.json()["status"] == "shadow"

    uid, job_id = _study_job()
    assert execute(job_id) == "done"
    clinician = keys["clinician"]
    report = _report(api, clinician, uid)
    findings = report["sections"]["findings"]
    assert "There is a pleural effusion." in findings and "Heart size is normal." in findings
    assert "enlarged" not in findings  # the shadow's words never reach the draft
    signed = findings + " There is a small right pneumothorax."
    r = api.post(f"/api/v1/reports/{report['id']}/sign", headers={
        **clinician, "If-Match": report["etag"]}, json={"sections": {"findings": signed}})
    assert r.status_code == 200, r.text

    v1 = api.get("/api/v1/admin/models/test-reporter/1", headers=admin).json()["figures"]
    active = v1["active"]
    assert (active["jobs"], active["done"], active["failed"], active["timed_out"]) == (1, 1, 0, 0)
    assert active["run_seconds"]["count"] == 1 and active["load_seconds"]["count"] == 1
    draft_text = "\n".join(report["sections"].values())
    signed_text = "\n".join({**report["sections"], "findings": signed}.values())
    import difflib

    m = sum(b.size for b in difflib.SequenceMatcher(None, draft_text, signed_text,
                                                   autojunk=False).get_matching_blocks())
    expected = round(1 - 2 * m / (len(draft_text) + len(signed_text)), 6)
    assert active["edit_rate"] == {"reports": 1, "mean": expected, "p50": expected}
    assert 0 < expected < 0.5
    codes = active["signed"]["codes"]
    assert codes[EFFUSION]["agree_present"] == 1
    assert codes[HEART]["agree_absent"] == 1
    assert codes[PTX]["miss"] == 1
    assert active["signed"]["false_positive"] == 0

    v2 = api.get("/api/v1/admin/models/test-reporter/2", headers=admin).json()
    shadow = v2["figures"]["shadow"]
    assert shadow["done"] == 1 and shadow["against_active"]["differing_codes"] == {HEART: 1}
    assert shadow["against_active"]["agreement"] == 0.5
    sc = shadow["signed"]["codes"]
    assert sc[EFFUSION]["agree_present"] == 1 and sc[HEART]["false_positive"] == 1
    assert sc[PTX]["miss"] == 1

    # the technical family states no finding: it is judged on the edit rate only
    from app.db.models import ModelOutcome
    from app.db.session import session_factory

    with session_factory()() as s:
        by_family = {o.family: o for o in s.scalars(select(ModelOutcome))
                     if o.role == "active"}
    assert by_family["technical"].codes == {} and by_family["technical"].edit_rate == expected
    body = metrics.render()[0].decode()
    assert 'medgate_model_runs_total{family="test-reporter",outcome="done",role="shadow",' \
           'version="2"}' in body
    assert 'medgate_model_edit_rate_count{family="test-reporter",version="1"}' in body
    assert 'medgate_model_findings_total{family="test-reporter",outcome="false_positive",' \
           'role="shadow",version="2"}' in body

    # activate the shadow on the rule: the next job drafts from v2; roll back: v1 again
    r = change(api, admin, "test-reporter/2/activate", rule="cxr-report")
    assert r.status_code == 200 and r.json()["status"] == "active"
    from app.db.session import session_factory
    from app.pipeline.grouping import reanalyze_study

    _, (second,) = reanalyze_study(session_factory(), uid, actor="test")
    assert execute(second) == "done"
    assert "The heart is enlarged." in _report(api, clinician, uid)["sections"]["findings"]
    r = change(api, admin, "test-reporter/rollback", rule="cxr-report")
    assert r.status_code == 200
    assert r.json()["families"]["test-reporter"]["active"] == [{"rule": "*", "version": "1"}]
    _, (third,) = reanalyze_study(session_factory(), uid, actor="test")
    assert execute(third) == "done"
    latest = _report(api, clinician, uid)
    assert "Heart size is normal." in latest["sections"]["findings"]
    history = api.get("/api/v1/admin/models/test-reporter/2", headers=admin).json()["history"]
    assert [e["action"] for e in history] == [
        "model.register", "model.validate", "model.validated", "model.shadow",
        "model.activate", "model.rollback"]
    assert all(e["detail"].get("reason") == "test" for e in history[3:])
