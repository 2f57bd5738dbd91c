"""Offline analysis of local files: grouping, routing, engines, drafts and what comes back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

from app.pipeline.analyze import analyze_paths, expand_paths
from app.pipeline.routing import RouteRule
from app.reports.composer import Draft
from models.base import ModelSpec
from tests.conftest import shared_file


def shared(*parts: str) -> Path:
    return shared_file("/".join(parts))


def technical(result) -> dict:
    found = [r for r in result.results if r["model"]["family"] == "technical"]
    assert len(found) == 1, result.warnings
    return found[0]


def test_ct_small_and_ecg_waveform_are_two_studies_with_technical_results(monkeypatch, tmp_path):
    from app.config import reset_settings
    from app.rag.search import reset

    # the CT assistant searches the knowledge base: a private index, the hashing embedder
    monkeypatch.setenv("MEDGATE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MEDGATE_EMBEDDER", "hashing")
    reset_settings()
    reset()
    out = analyze_paths([Path(get_testdata_file("CT_small.dcm")),
                         Path(get_testdata_file("waveform_ecg.dcm"))])
    by_domain = {r.domain: r for r in out}
    assert set(by_domain) == {"ct", "ecg"} and all(r.status == "analyzed" for r in out)
    ct, ecg = by_domain["ct"], by_domain["ecg"]
    assert ct.study_uid == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert ct.rule == "ct" and ct.pipeline == ["technical", "ct-quant", "ct-assistant"]
    ct_m = {m["name"]: m["value"] for m in technical(ct)["measurements"]}
    assert ct_m["slice_count"] == 1 and ct_m["slice_thickness"] == 5.0
    ecg_m = {m["name"]: m["value"] for m in technical(ecg)["measurements"]}
    assert ecg_m["ecg_lead_count"] == 12 and ecg_m["sampling_frequency"] == 1000
    # each later family of the ECG pipeline either ran or is reported, never silently missing
    ran = {r["model"]["family"] for r in ecg.results}
    for family in ("ecg-measure", "merl"):
        assert family in ran or any(family in w for w in ecg.warnings)
    draft = Draft.from_dict(ct.draft)
    assert draft.sections["technique"] and "slice thickness 5 mm" in draft.text()
    json.dumps([r.to_dict() for r in out])
    monkeypatch.undo()
    reset_settings()
    reset()


def test_folder_is_expanded_and_unreadable_files_are_listed_with_the_reason(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "a.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / ".hidden").write_text("skipped")
    out = analyze_paths([tmp_path, tmp_path / "gone.dcm"])
    statuses = sorted((r.status, Path(r.paths[0]).name) for r in out)
    assert statuses == [("analyzed", "a.dcm"), ("unreadable", "gone.dcm"),
                        ("unreadable", "notes.txt")]
    reasons = {Path(r.paths[0]).name: r.reason for r in out if r.status == "unreadable"}
    assert reasons["gone.dcm"] == "no such file or folder"
    assert reasons["notes.txt"].startswith("not a DICOM file")


def test_instances_of_one_study_are_grouped_by_study_uid():
    paths = sorted(shared("ct", "ct-3slice").glob("*.dcm"))
    (result,) = analyze_paths(paths)
    assert result.domain == "ct" and len(result.paths) == 4
    assert result.study_meta["modalities"] == ["CT", "SEG"]


def test_mr_study_is_reported_unrouted_not_dropped():
    (result,) = analyze_paths([shared("mr", "prostate-adc")])
    assert result.status == "unrouted" and result.domain is None
    assert len(result.paths) == 20 and result.reason == "no routing rule matches this study"
    assert result.results == [] and result.draft is None


def test_wfdb_record_is_an_ecg_study_and_its_data_file_is_not_unreadable():
    folder = shared("ecg", "wfdb")
    rules = [RouteRule(name="ecg-technical", domain="ecg", modality=["ECG"],
                       pipeline=["technical"])]
    out = analyze_paths([folder], rules=rules)
    assert {r.status for r in out} == {"analyzed"}
    names = sorted(Path(r.paths[0]).name for r in out)
    assert names == ["100.hea", "s0010_re.hea", "test01_00s.hea"]
    record = next(r for r in out if r.paths[0].endswith("100.hea"))
    m = {x["name"]: x["value"] for x in technical(record)["measurements"]}
    assert m["sampling_frequency"] == 360 and m["ecg_lead_count"] == 2


def test_missing_engine_family_is_a_warning_and_other_engines_still_run():
    rules = [RouteRule(name="ct-plus", domain="ct", modality=["CT"],
                       pipeline=["technical", "no-such-family"])]
    (result,) = analyze_paths([get_testdata_file("CT_small.dcm")], rules=rules)
    assert result.status == "analyzed"
    assert any("engine no-such-family@reference is not available" in w
               for w in result.warnings)
    assert technical(result)["trained"] is True


def test_given_spec_is_used_for_its_family():
    specs = {"technical": ModelSpec("technical", "9.9.9")}
    (result,) = analyze_paths([get_testdata_file("CT_small.dcm")], specs=specs)
    assert technical(result)["model"]["version"] == "9.9.9"
    assert "technical@9.9.9" in result.draft["models"]


def test_expand_paths_keeps_hea_and_skips_its_companions():
    files, missing = expand_paths([shared("ecg", "wfdb")])
    assert missing == []
    assert sorted(p.name for p in files) == ["100.hea", "s0010_re.hea", "test01_00s.hea"]
