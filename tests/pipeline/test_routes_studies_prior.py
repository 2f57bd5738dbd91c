"""Routing rules in the database, unrouted studies kept and listed, the studies API, the prior,
metrics, and offline analysis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pydicom.data
from sqlalchemy import select

from tests.conftest import ROOT
from tests.pipeline.conftest import CT_SMALL, ECG, complete_now, job_states, store

MR = Path(pydicom.data.get_testdata_file("MR_small.dcm"))


def test_default_routes_are_seeded_and_editable(client, keys):
    admin = keys["admin"]
    rules = client.get("/api/v1/admin/routes", headers=admin).json()["rules"]
    domains = {r["domain"] for r in rules}
    assert domains == {"cxr", "ct", "ecg", "pathology"}
    assert all(r["pipeline"][0] == "technical" for r in rules)
    bad = client.put("/api/v1/admin/routes", headers=admin,
                     json={"rules": [{"name": "x", "domain": "brain", "pipeline": ["technical"]}]})
    assert bad.status_code == 422
    assert client.get("/api/v1/admin/routes", headers=admin).json()["rules"] == rules
    mr_rule = {"name": "mr-as-ct", "priority": 10, "domain": "ct", "modality": ["MR"],
               "pipeline": ["technical"], "queue": "ct"}
    ok = client.put("/api/v1/admin/routes", headers=admin, json={"rules": rules + [mr_rule]})
    assert ok.status_code == 200 and len(ok.json()["rules"]) == len(rules) + 1
    assert client.get("/api/v1/admin/routes", headers=keys["clinician"]).status_code == 403


def test_unrouted_study_is_kept_and_listed(client, keys):
    uid = store(MR)
    assert complete_now() == [uid]
    assert job_states(uid) == []
    listed = client.get("/api/v1/studies", params={"route_status": "unrouted"},
                        headers=keys["clinician"]).json()
    assert [s["study_uid"] for s in listed["studies"]] == [uid]
    detail = client.get(f"/api/v1/studies/{uid}", headers=keys["clinician"]).json()
    assert detail["state"] == "complete" and detail["route_status"] == "unrouted"
    assert [e["kind"] for e in detail["timeline"]] == ["received", "complete", "unrouted"]
    assert detail["series"][0]["instance_count"] == 1


def test_study_api_filters_pages_and_deletes(client, keys, medgate):
    ct, ecg = store(CT_SMALL), store(ECG)
    clin = keys["clinician"]
    all_ = client.get("/api/v1/studies", headers=clin).json()
    assert all_["total"] == 2
    page = client.get("/api/v1/studies", params={"limit": 1, "offset": 1}, headers=clin).json()
    assert len(page["studies"]) == 1 and page["total"] == 2
    only_ct = client.get("/api/v1/studies", params={"modality": "CT"}, headers=clin).json()
    assert [s["study_uid"] for s in only_ct["studies"]] == [ct]
    assert client.get("/api/v1/studies/1.2.3.4", headers=clin).status_code == 404
    assert client.delete(f"/api/v1/studies/{ecg}", headers=clin).status_code == 403
    gone = client.delete(f"/api/v1/studies/{ecg}", headers=keys["admin"])
    assert gone.status_code == 200 and gone.json()["deleted_instances"] == 1
    assert not (medgate.store_dir / ecg).exists()
    assert client.get(f"/api/v1/studies/{ecg}", headers=clin).status_code == 404
    assert client.get("/api/v1/studies", headers=clin).json()["total"] == 1


def test_prior_is_the_same_patients_latest_earlier_study(medgate, tmp_path):
    from app.db.models import Study
    from app.db.session import session_factory
    from app.pipeline.runner import study_input

    uids = []
    for i, date in enumerate(["20200101", "20220101", "20240101"]):
        ds = pydicom.dcmread(CT_SMALL)
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = date
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path)
        uids.append(store(path))
    complete_now()
    with session_factory()() as s:
        newest = s.scalar(select(Study).where(Study.study_uid == uids[2]))
        data = study_input(s, newest, "ct")
        assert data.prior is not None and data.prior.study_uid == uids[1]
        oldest = s.scalar(select(Study).where(Study.study_uid == uids[0]))
        assert study_input(s, oldest, "ct").prior is None
        # the technique section names the comparison, with the prior's date from its headers
        from app.reports.composer import compose
        from models.base import ModelSpec, build

        engine = build(ModelSpec(family="technical", version="1.0.0", variant="builtin"))
        result = engine.run(data)
        assert result.raw["prior"] == {"study_uid": uids[1], "date": "2022-01-01",
                                       "description": ds.get("StudyDescription") or None}
        technique = [x.text for x in compose([result]).sections["technique"]]
        assert any(t.startswith("Comparison: prior study") and "2022-01-01" in t
                   for t in technique), technique
        # the oldest study has no prior, and its technique says no comparison was made
        oldest_technique = " ".join(
            x.text for x in compose([engine.run(study_input(s, oldest, "ct"))])
            .sections["technique"])
        assert "Comparison: prior study" not in oldest_technique
        assert "Comparison: none (no earlier study" in oldest_technique


def test_analyze_cli_prints_the_technical_engine_result():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    out = subprocess.run([sys.executable, "-m", "app.cli", "analyze", str(CT_SMALL), str(ECG),
                          "--json"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    results = {r["domain"]: r for r in json.loads(out.stdout)}
    assert set(results) == {"ct", "ecg"}
    for r in results.values():
        technical = [x for x in r["results"] if x["model"]["family"] == "technical"]
        assert len(technical) == 1 and technical[0]["measurements"]
    ct = {m["name"]: m for m in results["ct"]["results"][0]["measurements"]}
    assert ct["slice_thickness"]["value"] == 5.0
    text = subprocess.run([sys.executable, "-m", "app.cli", "analyze", str(CT_SMALL)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert "TECHNIQUE" in text.stdout and "technical@" in text.stdout
