"""The CT assistant's reference run on the real 3-slice CT with its liver SEG: key slices from
ct-quant, windowed; the prompt carries the retrieved CT knowledge entries (the platform's
search, real corpus) and the measured quantities; the answer's citations are kept only for the
entries given; the draft leaves the untrained text out."""

from __future__ import annotations

import pytest

from app.dicom.headers import read_header
from app.reports.composer import compose
from models.base import ModelSpec, StudyInput, build
from models.ct.assistant import WINDOWS, build_prompt, window
from tests.conftest import shared_file


@pytest.fixture
def knowledge(tmp_path, monkeypatch):
    from app.config import reset_settings
    from app.rag.search import knowledge_search
    from app.rag.search import reset as reset_rag

    monkeypatch.setenv("MEDGATE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MEDGATE_EMBEDDER", "hashing")
    reset_settings()
    reset_rag()
    yield knowledge_search
    reset_settings()
    reset_rag()


def test_the_reference_assistant_prompts_with_knowledge_and_measurements(knowledge, tmp_path):
    seg = shared_file("ct/ct-3slice/liver_seg.dcm")
    paths = [*sorted(seg.parent.glob("0*.dcm")), seg]
    study = StudyInput(domain="ct", paths=paths, metadata=[read_header(p) for p in paths],
                       output_dir=tmp_path / "out", knowledge=knowledge)
    quant = build(ModelSpec("ct-quant", "1.0.0", "builtin")).run(study)
    study.earlier = [quant]
    assistant = build(ModelSpec("ct-assistant", "reference", "reference"))
    result = assistant.run(study)

    assert result.trained is False
    raw = result.raw
    ids = [e["id"] for e in raw["entries"]]
    assert "ct-hepatic-steatosis" in ids
    prompt = raw["prompt"]
    assert prompt.startswith("<image>\nDescribe the findings of this CT study.")
    assert "- liver mean: 37.3" in prompt and "(slices " in prompt
    assert "- finding: Hepatic steatosis (uncertain)" in prompt
    for n, e in enumerate(raw["entries"], start=1):
        assert f"[{n}] {e['title']}:" in prompt
    assert [i["window"] for i in raw["images"]] == ["soft_tissue", "lung", "bone"]
    assert raw["images"][0]["reason"] == "largest extent of Liver"
    assert raw["generation"]["tiles"] == 3
    for c in raw["citations"]:
        assert set(c["knowledge"]) <= set(ids)

    draft = compose([quant, result])
    assert "ct-assistant@reference" in draft.excluded
    text = " ".join(s.text for sec in draft.sections.values() for s in sec)
    assert raw["answer"][:20] not in text or not raw["answer"].strip()
    # the measured liver is stated; steatosis is not (indeterminate: the phase is unknown)
    assert "Liver volume 70.4 mL; Liver mean attenuation 37.3 HU." in text
    assert "steatosis" not in text.lower()


def test_windows_and_prompt_building_are_exact():
    import numpy as np

    hu = np.array([-1200.0, -160.0, 40.0, 240.0, 3000.0])
    assert window(hu, *WINDOWS["soft_tissue"]).tolist() == [0, 0, 128, 255, 255]
    text = build_prompt("Q?", ["- a: 1 HU"], [{"id": "x", "title": "T", "passage": "p " * 300}],
                        passage_chars=20)
    assert text.splitlines()[:2] == ["<image>", "Q?"]
    assert "[1] T: " + ("p " * 10).strip() in text
    assert "cite a reference as [n]" in text
