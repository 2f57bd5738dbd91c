"""The MedPLIB engine on a real radiograph made non-square (256 x 320): the reference answers a
point, a box and a drawn mask; a checkpoint taught to say ``<SEG>`` returns a binary mask of the
source image's size through SAM-Med2D, with either way of taking the padding back out."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from models.base import ContractError, InputError, ModelSpec, Prompt, StudyInput, build
from models.masks import read_mask, write_mask
from tests.asks.conftest import chest_cr
from tests.pixel.taught import ANSWER, teach

QUESTION = "Please segment the lesion in <region>."
POINT = (100.0, 150.0)


@pytest.fixture(scope="module")
def cr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("medplib-cr")
    path = chest_cr(folder / "cr.dcm")
    return path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def reference():
    engine = build(ModelSpec("medplib", "reference", "reference"))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def taught(cr, tmp_path_factory):
    return teach(cr[0], QUESTION, POINT, tmp_path_factory.mktemp("medplib") / "medplib-tiny")


def study(cr, tmp_path, **prompt) -> StudyInput:
    path, uid = cr
    return StudyInput(domain="cxr", paths=[path], metadata=[
        {"SOPInstanceUID": uid, "SeriesInstanceUID": "1.2.3", "Modality": "CR"}],
        prompt=Prompt(prompt.pop("question", QUESTION), instance_uid=uid, **prompt),
        output_dir=tmp_path / "out")


@pytest.mark.parametrize("kind", ["point", "box", "mask", "none"])
def test_the_reference_answers_each_kind_of_region(reference, cr, tmp_path, kind):
    extra = {"point": {"point": POINT}, "box": {"box": (20.0, 30.0, 100.0, 120.0)},
             "none": {"question": "Is there an effusion?"}}.get(kind, {})
    if kind == "mask":
        drawn = np.zeros((320, 256), dtype=np.uint8)
        drawn[100:220, 60:200] = 1
        extra = {"mask_path": str(write_mask(tmp_path, "drawn", drawn))}
    result = reference.run(study(cr, tmp_path, **extra))
    assert result.trained is False and result.model.family == "medplib"
    assert result.raw["answer"], "the reference writes something"
    assert any("reference variant" in w for w in result.warnings)
    gen = result.raw["generation"]
    assert gen["visual_tokens"] == 16 and gen["tokens"] > 0
    if kind == "none":
        assert gen["region_points"] is None and result.raw["region_mask_pixels"] is None
    else:
        assert result.raw["region_mask_pixels"] > 0
    if kind == "mask":  # the drawn region covers cells of the 4 x 4 grid
        assert gen["region_points"] > 0


def test_a_question_without_a_prompt_or_in_another_domain_is_refused(reference, cr, tmp_path):
    path, uid = cr
    with pytest.raises(InputError, match="has no study-level task"):
        reference.run(StudyInput(domain="cxr", paths=[path], metadata=[{"SOPInstanceUID": uid}]))
    with pytest.raises(InputError, match="not a ecg study"):
        reference.run(StudyInput(domain="ecg", paths=[path], metadata=[{"SOPInstanceUID": uid}],
                                 prompt=Prompt("q", instance_uid=uid, point=POINT)))
    with pytest.raises(InputError, match="outside"):
        reference.run(study(cr, tmp_path, point=(300.0, 10.0)))


@pytest.mark.parametrize("postprocess", ["medplib", "centred_crop"])
def test_a_taught_checkpoint_says_seg_and_gets_a_mask_of_the_source_size(taught, cr, tmp_path,
                                                                        postprocess):
    engine = build(ModelSpec("medplib", "t1", "checkpoint", weights_path=str(taught),
                             config={"mask_postprocess": postprocess}))
    result = engine.run(study(cr, tmp_path, point=POINT))
    assert result.trained is True
    assert result.raw["answer"] == ANSWER and result.raw["text"] == "It is the lesion."
    assert result.raw["generation"]["seg_token_at"] == len(engine.tokenizer(
        "It is the lesion. ", add_special_tokens=False).input_ids)
    (region,) = result.regions
    mask = read_mask(region.mask_path)
    assert mask.shape == (320, 256) == region.shape and set(np.unique(mask)) <= {0, 1}
    assert region.instance_uid == cr[1] and region.kind == "mask"
    assert result.raw["mask"]["postprocess"] == postprocess
    assert result.raw["mask"]["pixels"] == int(mask.sum()) > 0


def test_a_checkpoint_without_the_added_tokens_or_of_another_shape_is_refused(taught, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(taught, other)
    config = json.loads((other / "config.json").read_text())
    config["hidden_size"] = 96
    (other / "config.json").write_text(json.dumps(config))
    engine = build(ModelSpec("medplib", "x", "checkpoint", weights_path=str(other)))
    with pytest.raises(ContractError, match="mis-shaped"):
        engine.load()
    with pytest.raises(ContractError, match="mask_postprocess"):
        build(ModelSpec("medplib", "x", "checkpoint", weights_path=str(taught),
                        config={"mask_postprocess": "stretch"}))
