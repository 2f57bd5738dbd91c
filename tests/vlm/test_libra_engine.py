"""The Libra engine on two CPU cores: the prior the platform found is the prior the TAC sees;
without one the current image stands in and no comparison language survives; a hub-layout
checkpoint loads strictly (RAD-DINO from the shards or from its own folder)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from models.base import ContractError, InputError, ModelSpec, StudyInput, build, load_engine
from models.runtime.strict import StrictLoadError
from models.vlm.hub import save_folder
from models.vlm.libra.comparison import comparison_term, strip_comparisons
from models.vlm.libra.engine import VISION_PREFIX
from models.vlm.libra.preprocess import preprocess_pair
from models.vlm.libra.tree import REFERENCE_CONFIG
from models.vlm.splice import expand_placeholders
from tests.conftest import shared_file
from tests.vlm.memorise import memorise

ANSWER = "Heart size is normal. The left effusion is unchanged. Lungs are clear."


@pytest.fixture(scope="module")
def images() -> tuple[Path, Path]:
    return shared_file("cxr/00000001_000.png"), shared_file("cxr/00027426_000.png")


def _study(path: Path, uid: str, date: str, view: str = "PA", prior: StudyInput | None = None
           ) -> StudyInput:
    return StudyInput("cxr", [path], [{"SOPInstanceUID": uid, "StudyDate": date,
                                       "ViewPosition": view, "Modality": "CR"}],
                      study_uid=f"2.25.{uid}", prior=prior)


@pytest.fixture(scope="module")
def reference():
    return load_engine(build(ModelSpec("libra", "reference", "reference")))


def test_the_prior_found_by_the_platform_is_the_prior_libra_reads(reference, images):
    current, earlier = images
    prior = _study(earlier, "11", "20240301")
    result = reference.run(_study(current, "12", "20250101", prior=prior))
    assert not result.trained
    raw = result.raw
    assert raw["dummy_prior"] is False and raw["comparison_guard"]["applied"] is False
    assert raw["prior"] == {"study_uid": "2.25.11", "date": "2024-03-01", "file": str(earlier),
                            "instance_uid": "11"}
    assert raw["current"]["instance_uid"] == "12"
    assert raw["facts"][0]["text"].endswith("with the prior of 2024-03-01.")
    # the pair is current then prior, and they differ; visual tokens: (56 / 14) ** 2
    pair, dummy = preprocess_pair(current, earlier, size=56)
    assert not dummy and not torch.equal(pair[0], pair[1])
    assert raw["generation"]["visual_tokens"] == 16
    assert any("random weights" in w for w in result.warnings)


def test_without_a_prior_the_current_image_stands_in_and_the_draft_says_so(reference, images):
    result = reference.run(_study(images[0], "21", "20250101"))
    raw = result.raw
    assert raw["dummy_prior"] is True and raw["prior"] is None
    assert raw["comparison_guard"]["applied"] is True
    assert "no earlier study of this patient" in raw["facts"][0]["text"]
    assert raw["facts"][0]["acquisition"]["prior_image"].startswith("none")
    pair, dummy = preprocess_pair(images[0], None, size=56)
    assert dummy and torch.equal(pair[0], pair[1])


def test_a_prior_without_a_frontal_image_is_not_used(reference, images):
    lateral_only = StudyInput("cxr", [images[1]], [{"SOPInstanceUID": "31", "ViewPosition": "LL",
                                                   "StudyDate": "20240301"}], study_uid="2.25.3")
    result = reference.run(_study(images[0], "32", "20250101", prior=lateral_only))
    assert result.raw["dummy_prior"] is True
    assert result.raw["prior_note"] == ("the prior study has no usable frontal image (its only "
                                        "image is a LL view)")


def test_a_study_without_a_radiograph_is_refused_with_the_reason(reference, tmp_path):
    with pytest.raises(InputError):
        reference.run(StudyInput("cxr", [tmp_path / "missing.png"], [{}]))


def test_the_guard_names_the_term_and_keeps_non_temporal_words():
    guarded = strip_comparisons("Increased interstitial markings. Stable cardiomegaly. "
                                "Compared with the prior, new left effusion.")
    assert guarded.text == "Increased interstitial markings."
    assert [t.lower() for _, t in guarded.removed] == ["stable", "compared with"]
    assert comparison_term("The 1.5 cm nodule is unchanged in size.") == "unchanged"
    for word in ("interval", "previously", "again seen", "has decreased", "resolved"):
        assert comparison_term(f"Effusion {word} here.") is not None, word


# -- a checkpoint that says something --------------------------------------------------------
def _libra_config(engine) -> dict:
    llm = {k: v for k, v in engine.model.config.to_dict().items()
           if k in {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                    "rms_norm_eps", "rope_theta", "tie_word_embeddings", "bos_token_id",
                    "eos_token_id", "pad_token_id"}}
    return {**llm, "architectures": ["LibraLlamaForCausalLM"], "model_type": "libra",
            "mm_projector_type": "TAC", "mm_vision_select_layer": "all",
            "mm_vision_select_feature": "patch", "mm_hidden_size": 32,
            "mm_vision_tower": "microsoft/rad-dino", "image_aspect_ratio": "pad"}


CHECKPOINT_CONFIG = {"vision": REFERENCE_CONFIG["vision"], "image_size": 56,
                     "template": "libra_v1",
                     "generation": {"strategy": "greedy", "max_new_tokens": 48}}


@pytest.fixture(scope="module")
def taught(images, tmp_path_factory) -> Path:
    """A reference-size Libra taught to say ANSWER for the current image given twice."""
    engine = load_engine(build(ModelSpec("libra", "reference", "reference")))
    model, tok = engine.model, engine.tokenizer
    pair, _ = preprocess_pair(images[0], None, size=56)
    ids = engine.prompt_ids(str(REFERENCE_CONFIG["query"]))
    answer = tok(ANSWER, add_special_tokens=False).input_ids + [tok.eos_token_id]
    torch.manual_seed(0)
    memorise(model, model, lambda: expand_placeholders(model.model.embed_tokens, ids,
                                                       [model.encode_images(pair)]), answer)
    folder = tmp_path_factory.mktemp("libra") / "libra-tiny"
    save_folder(model, _libra_config(engine), folder, tokenizer=tok, max_shard_bytes=400_000)
    return folder


def test_a_taught_checkpoint_runs_and_loses_its_comparison_sentence_without_a_prior(
        taught, images):
    engine = load_engine(build(ModelSpec("libra", "t1", "checkpoint", weights_path=str(taught),
                                         config=CHECKPOINT_CONFIG)))
    result = engine.run(_study(images[0], "41", "20250101"))
    assert result.trained
    assert result.raw["text"] == "Heart size is normal. Lungs are clear."
    removed = result.raw["comparison_guard"]["removed"]
    assert removed == [{"sentence": "The left effusion is unchanged.", "term": "unchanged"}]
    assert any("comparison language removed" in w for w in result.warnings)
    said = [s.text for s in result.text[0].sentences]
    assert said == ["Heart size is normal.", "Lungs are clear."]
    assert {st.code.value for st in result.text[0].sentences[0].findings} == {"cardiomegaly"}
    assert result.raw["generation"]["stopped"] == "eos"


def test_rad_dino_can_come_from_its_own_folder_and_is_required(taught, images, tmp_path):
    shards = copy.deepcopy(json.loads((taught / "model.safetensors.index.json").read_text()))
    from models.runtime.checkpoint import load_state_dict, save_sharded

    state = load_state_dict(taught)
    llm_only = tmp_path / "libra-llm"
    save_sharded({k: v for k, v in state.items() if not k.startswith(VISION_PREFIX)}, llm_only,
                 1 << 30, config=json.loads((taught / "config.json").read_text()))
    for f in taught.glob("tokenizer*"):
        (llm_only / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ContractError, match="vision_tower_dir"):
        load_engine(build(ModelSpec("libra", "t2", "checkpoint", weights_path=str(llm_only),
                                    config=CHECKPOINT_CONFIG)))
    dino = llm_only / "rad-dino"
    save_sharded({k.removeprefix(VISION_PREFIX): v for k, v in state.items()
                  if k.startswith(VISION_PREFIX)}, dino, 1 << 30,
                 config={"model_type": "dinov2", **REFERENCE_CONFIG["vision"]})
    engine = load_engine(build(ModelSpec("libra", "t3", "checkpoint", weights_path=str(llm_only),
                                         config={**CHECKPOINT_CONFIG,
                                                 "vision_tower_dir": "rad-dino"})))
    assert any("RAD-DINO weights read from rad-dino" in n for n in engine.load_notes)
    assert engine.run(_study(images[0], "51", "20250101")).raw["text"] == (
        "Heart size is normal. Lungs are clear.")
    assert shards["weight_map"]  # the taught folder itself was sharded with an index


def test_a_checkpoint_of_another_shape_or_connector_is_refused(taught, tmp_path):
    config = json.loads((taught / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in taught.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(json.dumps({**config, "mm_projector_type": "mlp2x_gelu"}))
    with pytest.raises(ContractError, match="TAC connector only"):
        build(ModelSpec("libra", "x", "checkpoint", weights_path=str(other)))
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    engine = build(ModelSpec("libra", "x", "checkpoint", weights_path=str(other),
                             config=CHECKPOINT_CONFIG))
    with pytest.raises(StrictLoadError, match="missing"):
        engine.load()
