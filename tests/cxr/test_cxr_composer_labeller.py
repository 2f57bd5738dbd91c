"""The CXR labeller is the composer's labeller for the cxr domain: a generated sentence that
lists no findings of its own is read by it, and enters the draft only when trained, grounded
findings agree; a sentence that states an unconfirmed finding stays out as unverified text."""

from __future__ import annotations

from app.reports.composer import compose
from models.base import EngineResult, Finding, GeneratedSentence, ModelInfo, TextSection
from models.phrasing import labeller_for


def test_generated_cxr_sentences_are_read_by_the_labeller_and_checked():
    labeller = labeller_for("cxr")
    assert labeller is not None
    assert [(s.code.value, s.state) for s in labeller("Mild cardiomegaly. No pneumothorax.")] == [
        ("cardiomegaly", "present"), ("pneumothorax", "absent")]
    grounded = EngineResult(
        model=ModelInfo("cxr-classifier", "1.0"), trained=True,
        findings=[Finding("cardiomegaly", "Cardiomegaly", score=0.91,
                          knowledge=("cxr-cardiomegaly",))])
    writer = EngineResult(
        model=ModelInfo("report-writer", "1.0"), trained=True,
        text=[TextSection("findings", (GeneratedSentence("The heart is enlarged."),
                                       GeneratedSentence("There is a large pneumothorax.")))])
    draft = compose([grounded, writer], labeller=labeller)
    findings = [s.text for s in draft.sections["findings"]]
    assert "The heart is enlarged." in findings
    assert not any("pneumothorax" in t for t in findings)
    assert any("pneumothorax" in u["text"] for u in draft.unverified)


def test_a_trained_engine_states_in_the_technique_which_image_it_read():
    reason = "Frontal PA image (View Position) used for report generation."
    writer = EngineResult(
        model=ModelInfo("promptmrg", "2024"), trained=True,
        raw={"facts": [{"text": reason, "measurements": [],
                        "acquisition": {"view": "PA", "image": "a.dcm"}}]})
    technique = compose([writer]).sections["technique"]
    assert [s.text for s in technique] == [reason]
    assert {e.ref for e in technique[0].evidence} == {"acq:view", "acq:image"}
    untrained = EngineResult(model=ModelInfo("promptmrg", "reference"), trained=False,
                             raw=writer.raw)
    assert compose([untrained]).sections["technique"] == []
