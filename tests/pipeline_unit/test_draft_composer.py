"""The composer: grounded sentences only, untrained engines excluded, knowledge cited by title."""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

from app.reports.composer import SECTIONS, Draft, DraftError, Evidence, Sentence, compose
from models.base import (
    EngineResult,
    Finding,
    GeneratedSentence,
    Measurement,
    ModelInfo,
    ModelSpec,
    Region,
    Statement,
    StudyInput,
    TextSection,
    Where,
    build,
)

KB = {"ecg-sinus-tachycardia": {"title": "Sinus tachycardia", "domain": "ecg"},
      "ecg-normal": {"title": "Normal ECG", "domain": "ecg"}}


def technical_ecg() -> EngineResult:
    engine = build(ModelSpec("technical", "1.0.0"))
    return engine.run(StudyInput("ecg", [get_testdata_file("waveform_ecg.dcm")]))


def ecg_measure(findings: list[Finding]) -> EngineResult:
    return EngineResult(
        model=ModelInfo("ecg-measure", "1.0.0"), trained=True,
        measurements=[Measurement("heart_rate", 112, "/min"), Measurement("pr_interval", 160, "ms"),
                      Measurement("qrs_duration", 92, "ms"), Measurement("qt_interval", 320, "ms"),
                      Measurement("qtc_interval", 437, "ms"), Measurement("qrs_axis", 45, "deg"),
                      Measurement("st_level", 0.1, "mV", where=Where(lead="V2"))],
        findings=findings, warnings=["lead V6 noisy"])


def untrained_merl() -> EngineResult:
    return EngineResult(
        model=ModelInfo("merl", "reference"), trained=False,
        findings=[Finding("AFIB", "Atrial fibrillation", score=0.97)],
        text=[TextSection("impression", (GeneratedSentence(
            "Atrial fibrillation.", (Statement("AFIB"),)),))],
        warnings=["random weights"])


def all_sentences(draft: Draft) -> list[Sentence]:
    return [s for name in SECTIONS for s in draft.sections[name]]


def test_untrained_results_never_reach_the_text():
    tachy = Finding("sinus_tachycardia", "sinus tachycardia", evidence=("m:heart_rate",))
    draft = compose([technical_ecg(), ecg_measure([tachy]), untrained_merl()])
    assert "fibrillation" not in draft.text().lower()
    assert "merl@reference" in draft.excluded
    assert all(e.model != "merl@reference" for s in all_sentences(draft) for e in s.evidence)
    assert not any("random weights" in w for w in draft.warnings)
    assert "ecg-measure@1.0.0: lead V6 noisy" in draft.warnings


def test_every_sentence_carries_evidence_and_technique_cites_measurements():
    tachy = Finding("sinus_tachycardia", "sinus tachycardia", evidence=("m:heart_rate",))
    draft = compose([technical_ecg(), ecg_measure([tachy])])
    assert all(s.evidence for s in all_sentences(draft))
    technique = draft.sections["technique"]
    leads = next(s for s in technique if s.text.startswith("The ECG holds 12 leads"))
    assert {(e.kind, e.ref) for e in leads.evidence} >= {("measurement", "m:ecg_lead_count")}
    assert leads.evidence[0].detail["value"] == 12


def test_key_measurements_are_one_findings_sentence_with_the_numbers():
    draft = compose([ecg_measure([])])
    (sentence,) = draft.sections["findings"]
    assert sentence.text == ("Heart rate 112/min; PR interval 160 ms; QRS duration 92 ms; "
                             "QT interval 320 ms; QTc 437 ms; QRS axis 45 degrees.")
    assert [e.ref for e in sentence.evidence] == ["m:heart_rate", "m:pr_interval",
                                                  "m:qrs_duration", "m:qt_interval",
                                                  "m:qtc_interval", "m:qrs_axis"]
    assert draft.sections["impression"] == []  # nothing present, no normal statement


def test_finding_sentence_resolves_measurements_regions_and_knowledge_title():
    result = EngineResult(
        model=ModelInfo("cxr-model", "2.0"), trained=True,
        measurements=[Measurement("ctr", 0.58, "1")],
        regions=[Region("r:heart", box=(40, 60, 120, 90), label="heart", instance_uid="1.2.3")],
        findings=[Finding("cardiomegaly", "Cardiomegaly", score=0.9,
                          evidence=("m:ctr", "r:heart"),
                          knowledge=("cxr-cardiomegaly", "cxr-missing"))])
    kb = {"cxr-cardiomegaly": {"title": "Cardiomegaly on a PA chest radiograph"}}
    draft = compose([result], knowledge=kb.get)
    (sentence,) = draft.sections["findings"]
    assert sentence.text == "Cardiomegaly (ctr 0.58)."
    kinds = {e.kind: e for e in sentence.evidence}
    assert kinds["knowledge"].detail["title"] == "Cardiomegaly on a PA chest radiograph"
    assert kinds["region"].detail["box"] == [40, 60, 120, 90]
    assert kinds["measurement"].detail["value"] == 0.58
    assert "cxr-missing" not in {e.ref for e in sentence.evidence}
    assert any("cxr-missing" in n for n in draft.notes)
    assert [s.text for s in draft.sections["impression"]] == ["Cardiomegaly."]


def test_absent_findings_are_not_stated_but_an_explicit_normal_is():
    absent = Finding("afib", "Atrial fibrillation", state="absent")
    normal = Finding("normal_ecg", "Normal ECG", knowledge=("ecg-normal",))
    draft = compose([ecg_measure([absent, normal])], knowledge=KB.get)
    assert "fibrillation" not in draft.text().lower()
    assert [s.text for s in draft.sections["impression"]] == ["Normal ECG."]
    assert draft.sections["impression"][0].evidence[1].detail["title"] == "Normal ECG"


def test_impression_ranks_abnormal_first_and_flags_a_conflicting_normal():
    findings = [Finding("NORM", "Normal ECG", score=0.6),
                Finding("lvh", "Left ventricular hypertrophy", score=0.7),
                Finding("stach", "Sinus tachycardia", evidence=("m:heart_rate",))]
    draft = compose([ecg_measure(findings)])
    assert [s.text for s in draft.sections["impression"]] == [
        "Sinus tachycardia.", "Left ventricular hypertrophy."]
    assert any("conflicting" in w for w in draft.warnings)


def test_same_finding_from_two_engines_is_one_sentence_with_both_evidence():
    a = ecg_measure([Finding("stach", "Sinus tachycardia", evidence=("m:heart_rate",))])
    b = EngineResult(model=ModelInfo("other", "1"), trained=True,
                     findings=[Finding("STACH", "Sinus tachycardia", score=0.8)])
    draft = compose([a, b])
    sentences = [s for s in draft.sections["findings"] if s.text.startswith("Sinus tachycardia")]
    assert len(sentences) == 1
    assert {e.model for e in sentences[0].evidence} == {"ecg-measure@1.0.0", "other@1"}


def test_sentence_without_evidence_cannot_be_built():
    with pytest.raises(DraftError, match="no evidence"):
        Sentence("Normal study.", [])
    with pytest.raises(DraftError, match="evidence kind"):
        Evidence("opinion", "x", "m@1")
    with pytest.raises(DraftError, match="family@version"):
        Evidence("finding", "x", "m")
    with pytest.raises(DraftError, match="unknown draft section"):
        Draft(sections={"conclusion": []})


def test_draft_round_trips_through_json_and_text_keeps_section_order():
    tachy = Finding("stach", "Sinus tachycardia", evidence=("m:heart_rate",))
    draft = compose([technical_ecg(), ecg_measure([tachy]), untrained_merl()])
    again = Draft.from_dict(json.loads(json.dumps(draft.to_dict())))
    assert again == draft
    text = draft.text()
    assert text.index("TECHNIQUE") < text.index("FINDINGS") < text.index("IMPRESSION")
    assert list(draft.to_dict()["sections"]) == ["technique", "findings", "impression"]


def test_the_acquiring_devices_measurements_stand_beside_medgates():
    """pydicom's 12-lead ECG carries its Mortara cart's measurements: the draft states each
    next to MedGate's own, and cites both measurements."""
    result = build(ModelSpec("ecg-measure", "1.1.0")).run(
        StudyInput("ecg", [get_testdata_file("waveform_ecg.dcm")]))
    draft = compose([result])
    (sentence,) = [s for s in draft.sections["findings"] if "acquiring device" in s.text]
    assert "PR interval" in sentence.text and "(acquiring device 161 ms)" in sentence.text
    assert "(acquiring device 368 ms)" in sentence.text  # QT
    assert "QTc by the acquiring device 370 ms" in sentence.text  # its correction is not named
    cited = {e.ref for e in sentence.evidence}
    assert {"m:pr_interval", "m:cart_pr_interval", "m:cart_qtc"} <= cited
