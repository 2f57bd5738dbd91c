"""The MedRegA engine on two CPU cores: the task each request becomes (in English or Chinese),
the image it reads, and the regions a grounded answer gives on the source instance."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import torch

from models.base import ContractError, InputError, ModelSpec, Prompt, StudyInput, build, load_engine
from models.vlm.hub import save_folder
from models.vlm.images import read_display_image
from models.vlm.medrega import boxes
from models.vlm.medrega.engine import _grounded_findings
from models.vlm.medrega.preprocess import preprocess
from models.vlm.splice import fill_context
from tests.conftest import shared_file
from tests.vlm.memorise import memorise

LOCATE = "Please locate <ref>heart</ref>."
ANSWER = "<ref>heart</ref><box>[[300, 400, 700, 800]]</box>"


@pytest.fixture(scope="module")
def reference():
    return load_engine(build(ModelSpec("medrega", "reference", "reference")))


@pytest.fixture(scope="module")
def cxr() -> Path:
    return shared_file("cxr/00000001_000.png")


def _cxr_study(path: Path, prompt: Prompt | None = None) -> StudyInput:
    return StudyInput("cxr", [path], [{"SOPInstanceUID": "7.1", "Modality": "DX",
                                       "ViewPosition": "PA"}], prompt=prompt)


def test_a_study_without_a_question_gets_the_grounded_report_of_the_lungs(reference, cxr):
    result = reference.run(_cxr_study(cxr))
    assert not result.trained
    raw = result.raw
    assert raw["task"] == "grounded_report" and raw["language"] == "en"
    assert raw["question"].endswith("describe the condition of <ref>right lung</ref>, "
                                    "<ref>left lung</ref>")
    assert "You are given a chest x-ray image" in raw["question"]
    assert raw["image"]["instance_uid"] == "7.1" and raw["generation"]["image_tokens"] == 64
    assert any("random weights" in w for w in result.warnings)


def test_each_kind_of_question_becomes_its_task(reference, cxr):
    box = reference.run(_cxr_study(cxr, Prompt("What is this?", instance_uid="7.1",
                                               box=(128, 256, 128, 64))))
    width, height = read_display_image(cxr).width, read_display_image(cxr).height
    grid = boxes.to_grid((128, 256, 128, 64), width, height)
    assert box.raw["task"] == "region_to_text"
    assert boxes.render_box("this", [grid]) in box.raw["question"]
    zh = reference.run(_cxr_study(cxr, Prompt("请定位<ref>心脏</ref>", language="zh-CN")))
    assert zh.raw["task"] == "text_to_region" and zh.raw["language"] == "zh"
    assert zh.raw["question"].endswith("请定位这张胸部X光影像中的<ref>心脏</ref>。")
    with pytest.raises(boxes.BoxError, match="outside the 512 x 512 image"):
        reference.run(_cxr_study(cxr, Prompt("What?", instance_uid="7.1", box=(500, 0, 40, 9))))
    vqa = reference.run(_cxr_study(cxr, Prompt("Is there a pleural effusion?")))
    assert vqa.raw["task"] == "vqa"
    assert vqa.raw["question"].endswith("<image>\nIs there a pleural effusion?")


def test_a_ct_series_is_read_at_its_middle_slice_and_needs_a_question(reference):
    files = [shared_file(f"ct/ct-3slice/0{i}.dcm") for i in (1, 2, 3)]
    meta = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        meta.append({"SOPInstanceUID": str(ds.SOPInstanceUID), "Modality": "CT",
                     "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                     "InstanceNumber": int(ds.InstanceNumber)})
    with pytest.raises(InputError, match="ask it a question"):
        reference.run(StudyInput("ct", files, meta))
    result = reference.run(StudyInput("ct", files, meta, prompt=Prompt(LOCATE)))
    ordered = sorted(meta, key=lambda m: m["InstanceNumber"])
    assert result.raw["image"]["instance_uid"] == ordered[1]["SOPInstanceUID"]
    assert result.raw["question"].endswith("Please locate <ref>heart</ref> in this CT scan.")


def test_other_domains_and_unknown_instances_are_refused(reference, cxr):
    with pytest.raises(InputError, match="not a ecg study"):
        reference.run(StudyInput("ecg", [cxr], [{}]))
    with pytest.raises(InputError, match="not in this study"):
        reference.run(_cxr_study(cxr, Prompt("What is this?", instance_uid="9.9",
                                             point=(1.0, 2.0))))


def test_a_grounded_report_makes_each_located_organ_a_finding_with_its_region():
    answer = ("<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref>"
              "<box>[[535, 128, 923, 889]]</box>: No focal consolidation.")
    parsed = boxes.parse_answer(answer)
    regions = boxes.spans_to_regions(parsed.spans, 1000, 800, instance_uid="7.1")
    findings = _grounded_findings(parsed, regions, "7.1")
    assert [f.label for f in findings] == ["right lung", "left lung"]
    assert [f.evidence for f in findings] == [("medrega:1",), ("medrega:2",)]
    assert findings[1].criteria.endswith("described as: No focal consolidation.")
    assert findings[0].code.value == "region:right_lung"
    assert all(r.instance_uid == "7.1" and r.kind == "box" for r in regions)


# -- a checkpoint that answers -----------------------------------------------------------
@pytest.fixture(scope="module")
def taught(cxr, tmp_path_factory) -> Path:
    """A reference-size MedRegA taught to locate the heart in the CXR."""
    engine = load_engine(build(ModelSpec("medrega", "reference", "reference")))
    model, tok = engine.model, engine.tokenizer
    study = _cxr_study(cxr, Prompt(LOCATE))
    image = read_display_image(cxr)
    _, _, question = engine.question_for(study, "DX", (image.width, image.height))
    pixels = preprocess(image.rgb, size=224)
    image_text = "<img>" + "<IMG_CONTEXT>" * model.num_image_token + "</img>"
    ids = tok(engine.template.render(question.replace("<image>", image_text, 1))).input_ids
    answer = tok(ANSWER, add_special_tokens=False).input_ids + engine.eos_ids
    lm = model.language_model
    torch.manual_seed(0)
    memorise(model, lm, lambda: fill_context(lm.get_input_embeddings(), ids,
                                             model.extract_feature(pixels),
                                             engine.context_id), answer)
    config = json.loads(json.dumps(engine.model_config))
    config["llm_config"].update(vocab_size=len(tok), eos_token_id=engine.eos_ids[0],
                                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    folder = tmp_path_factory.mktemp("medrega") / "medrega-tiny"
    return save_folder(model, {**config, "architectures": ["InternVLChatModel"]}, folder,
                       tokenizer=tok)


def test_a_taught_checkpoint_returns_regions_on_the_source_instance(taught, cxr):
    engine = load_engine(build(ModelSpec("medrega", "t1", "checkpoint", weights_path=str(taught))))
    result = engine.run(_cxr_study(cxr, Prompt(LOCATE, instance_uid="7.1")))
    assert result.trained and result.raw["task"] == "text_to_region"
    assert result.raw["answer"] == ANSWER and result.raw["text"] == "heart"
    image = read_display_image(cxr)
    (region,) = result.regions
    assert region.label == "heart" and region.instance_uid == "7.1"
    assert region.box == pytest.approx(boxes.to_pixels((300, 400, 700, 800), image.width,
                                                       image.height))
    assert result.raw["generation"]["stopped"] == "eos"


def test_an_internvl_checkpoint_of_another_kind_is_refused(taught, tmp_path):
    config = json.loads((taught / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in taught.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    for change, match in (({"llm_config": {**config["llm_config"],
                                           "architectures": ["InternLM2ForCausalLM"]}},
                           "InternLM2ForCausalLM"),
                          ({"use_llm_lora": 128}, "LoRA"), ({"vision_config": None},
                                                            "vision_config")):
        (other / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ContractError, match=match):
            build(ModelSpec("medrega", "x", "checkpoint", weights_path=str(other)))
