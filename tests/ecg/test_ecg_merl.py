"""MERL: the module tree loads a full-size state dict strictly, a hub-style folder checkpoint
loads and gives the scores of the model it was saved from, the reference variant runs end to end
and is marked untrained, and the declared tree (``models inspect``) has the released names and
shapes. (Checksums are the platform's: see tests/runtime/test_manifest.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from models.base import ContractError, ModelSpec, StudyInput, build, sha256_file
from models.ecg import merl_preprocess
from models.ecg.merl import (
    CHECKPOINT_CONFIG,
    REFERENCE_CONFIG,
    bundled_tokenizer_dir,
    load_state,
)
from models.ecg.merl_net import MerlModel
from models.ecg.merl_tree import MERL_TREE, build_merl_tree
from models.ecg.signal import read_ecg
from models.runtime.checkpoint import describe, load_state_dict, save_sharded
from models.runtime.strict import StrictLoadError, materialize_meta_buffers, strict_load
from models.runtime.tree import build_tree, describe_tree, register_tree

ECG = Path(get_testdata_file("waveform_ecg.dcm"))

# Parameter names and shapes of the authors' ECGCLIP (vit_tiny + MedCPT-Query-Encoder), written
# out from their utils/vit1d.py, utils/utils_builder.py and MedCPT's config.json.
RELEASED_SHAPES = {
    "ecg_encoder.to_patch_embedding.weight": (192, 12, 50),
    "ecg_encoder.pos_embedding": (1, 100, 192),
    "ecg_encoder.block0.attn.norm.weight": (192,),
    "ecg_encoder.block0.attn.fn.to_qkv.weight": (576, 192),
    "ecg_encoder.block0.attn.fn.to_qkv.bias": (576,),
    "ecg_encoder.block0.attn.fn.to_out.0.weight": (192, 192),
    "ecg_encoder.block11.ff.fn.net.0.weight": (768, 192),
    "ecg_encoder.block11.ff.fn.net.3.weight": (192, 768),
    "ecg_encoder.norm.bias": (192,),
    "proj_e.0.weight": (256, 192),
    "proj_e.1.running_var": (256,),
    "proj_e.3.weight": (256, 256),
    "proj_e.4.num_batches_tracked": (),
    "linear1.weight": (256, 192),
    "linear2.weight": (256, 192),
    "lm_model.embeddings.word_embeddings.weight": (30522, 768),
    "lm_model.encoder.layer.11.output.dense.weight": (768, 3072),
    "lm_model.pooler.dense.weight": (768, 768),
    "proj_t.0.weight": (256, 768),
    "proj_t.2.weight": (256, 256),
}
RELEASED_RESNET_SHAPES = {
    "ecg_encoder.conv1.weight": (64, 12, 7),
    "ecg_encoder.layer2.0.shortcut.0.weight": (128, 64, 1),
    "ecg_encoder.layer4.1.bn2.running_mean": (512,),
    "ecg_encoder.linear.weight": (10, 512),
    "downconv.weight": (256, 512, 1),
    "att_pool_head.positional_embedding": (1, 314, 256),
    "att_pool_head.cls_token": (1, 1, 256),
    "att_pool_head.mhsa.in_proj_weight": (768, 256),
    "att_pool_head.c_proj.weight": (256, 256),
    "linear1.weight": (256, 256),
}


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory) -> tuple[Path, str, torch.Tensor]:
    """A random state dict of the published configuration, saved as the release is (a bare
    state dict). Stored in float16 to halve the file: strictness concerns names and shapes."""
    # the module tree built from the config (on the meta device: names and shapes only) ...
    with torch.device("meta"):
        tree = MerlModel(CHECKPOINT_CONFIG).state_dict()
    for name, shape in RELEASED_SHAPES.items():
        assert tuple(tree[name].shape) == shape, name
    # ... filled with random values
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=gen, dtype=torch.float16)
                 if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype))
             for k, v in tree.items()}
    for k in state:
        if k.endswith("running_var"):  # a variance is positive
            state[k] = state[k].abs() + 0.5
    # an older transformers saved this constant buffer; the loader must accept it
    state["lm_model.embeddings.position_ids"] = torch.arange(512)[None]
    path = tmp_path_factory.mktemp("merl") / "merl_vit_tiny_ckpt.pth"
    torch.save(state, path)
    probe = state["ecg_encoder.block3.attn.fn.to_qkv.weight"].float()
    return path, sha256_file(path), probe


def test_checkpoint_loads_strict_and_is_trained(full_checkpoint):
    path, digest, probe = full_checkpoint
    spec = ModelSpec("merl", "icml2024-vit-tiny", variant="checkpoint", weights_path=str(path),
                     sha256=digest, config={"tokenizer_dir": str(bundled_tokenizer_dir()),
                                            "thresholds": {"AFIB": -1.0}})
    engine = build(spec)
    assert engine.trained is True and engine.weights_sha256 == digest
    assert engine.model is None  # building checks the spec; the weights are read by load()
    engine.load()
    assert any("position_ids" in n for n in engine.load_notes)
    assert torch.equal(engine.model.state_dict()["ecg_encoder.block3.attn.fn.to_qkv.weight"],
                       probe)
    # one ECG-tower forward at full size (the 110 M text tower is not run here)
    x = merl_preprocess.preprocess(read_ecg(ECG))
    emb = engine.model.ecg_embedding(torch.from_numpy(x)[None])
    assert emb.shape == (1, 256) and torch.allclose(emb.norm(dim=-1), torch.ones(1))


def test_checkpoint_with_a_foreign_key_is_refused(tmp_path):
    small = {k: v for k, v in REFERENCE_CONFIG.items() if k not in ("seed", "thresholds")}
    state = MerlModel(small).state_dict()
    state["extra_head.weight"] = torch.zeros(2, 2)
    bad = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, bad)
    spec = ModelSpec("merl", "x", variant="checkpoint", weights_path=str(bad),
                     config={**small, "tokenizer_dir": str(bundled_tokenizer_dir())})
    engine = build(spec)
    with pytest.raises(ContractError, match="does not match") as err:
        engine.load()
    assert isinstance(err.value, StrictLoadError)
    assert err.value.unexpected == ["extra_head.weight"] and not err.value.missing
    assert "0 missing, 1 unexpected, 0 mis-shaped" in str(err.value)


def test_checkpoint_needs_a_tokenizer(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    with pytest.raises(ContractError, match="tokenizer_dir"):
        build(ModelSpec("merl", "x", variant="checkpoint", weights_path=str(weights)))


def test_resnet_variant_matches_release_shapes():
    state = MerlModel({**CHECKPOINT_CONFIG, "ecg_model": "resnet18",
                       "text": {**CHECKPOINT_CONFIG["text"], "num_hidden_layers": 1}}).state_dict()
    for name, shape in RELEASED_RESNET_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    assert not any(k.startswith("proj_e") for k in state)


def test_reference_runs_end_to_end_and_is_untrained():
    engine = build(ModelSpec("merl", "reference-0", variant="reference",
                             config={"thresholds": {"NORM": -1.0}}))
    res = engine.run(StudyInput("ecg", [ECG]))
    assert res.trained is False  # random weights: the composer keeps this out of report text
    assert set(res.raw["scores"]) == set(engine.classes)
    assert all(-1.0 <= s <= 1.0 for s in res.raw["scores"].values())
    assert res.raw["preprocessing"] == list(merl_preprocess.STEPS)
    assert [f.code.value for f in res.findings] == ["merl:NORM"]
    assert res.findings[0].knowledge == ("ecg-normal-ecg",)
    assert any("random weights" in w for w in res.warnings)
    # same seed, same scores
    again = build(ModelSpec("merl", "reference-0", variant="reference")).run(StudyInput("ecg",
                                                                                          [ECG]))
    assert again.raw["scores"] == res.raw["scores"]


def test_preprocessing_steps():
    rec = read_ecg(ECG)
    x = merl_preprocess.preprocess(rec)
    assert x.shape == (12, 5000) and x.dtype == np.float32
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    raw = np.vstack([rec.lead(n) for n in ("aVL", "aVF")])
    scaled = (raw - rec.signals_mv.min()) / (np.ptp(rec.signals_mv) + 1e-8)
    assert np.allclose(x[5], scaled[0], atol=1e-5) and np.allclose(x[4], scaled[1], atol=1e-5)
    short = merl_preprocess.pad_or_truncate(np.ones((12, 2500)))
    assert short.shape == (12, 5000) and short[:, 2500:].sum() == 0


def test_load_state_refuses_non_state_dicts(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], p)
    with pytest.raises(ContractError, match="state dict"):
        load_state(p)


def test_patch_embedding_equals_the_strided_convolution():
    from models.ecg.merl_net import ViT1d

    vit = ViT1d(width=32, depth=1, heads=2, mlp_dim=64, dim_head=16)
    x = torch.rand(2, 12, 5000)
    with torch.no_grad():
        conv = vit.to_patch_embedding(x).transpose(1, 2)
        assert torch.allclose(vit.patches(x), conv, atol=1e-5)


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


def test_folder_checkpoint_gives_the_scores_of_the_model_it_was_saved_from(tmp_path):
    ref = build(ModelSpec("merl", "reference-0", variant="reference"))
    ref.load()
    expected = ref.run(StudyInput("ecg", [ECG])).raw["scores"]
    # the same weights as a hub folder: safetensors shards, index, config and tokenizer files
    folder = tmp_path / "merl-small"
    small = {k: v for k, v in REFERENCE_CONFIG.items() if k not in ("seed", "thresholds")}
    shards = save_sharded(ref.model.state_dict(), folder, max_shard_bytes=2 << 20, config=small)
    assert len(shards) > 1
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((bundled_tokenizer_dir() / name).read_bytes())
    assert describe(folder).tokenizer_files
    engine = build(ModelSpec("merl", "small-1", variant="checkpoint", weights_path=str(folder),
                             sha256="f" * 64, config=small))
    res = engine.run(StudyInput("ecg", [ECG]))  # run() loads by itself
    assert res.trained is True and res.model.sha256 == "f" * 64
    assert res.raw["scores"].keys() == expected.keys()
    assert np.allclose(list(res.raw["scores"].values()), list(expected.values()), atol=1e-4)


def test_folder_without_tokenizer_needs_tokenizer_dir(tmp_path):
    save_sharded({"x": torch.zeros(1)}, tmp_path, max_shard_bytes=1 << 20)
    with pytest.raises(ContractError, match="tokenizer_dir"):
        build(ModelSpec("merl", "x", variant="checkpoint", weights_path=str(tmp_path)))


# -- the declared module tree (medgate models inspect) ----------------------------------------
@pytest.fixture
def merl_tree():
    # models.ecg registers it on import; registering again is harmless
    register_tree(MERL_TREE)


def test_tree_is_the_released_vit_tiny_tree(merl_tree, full_checkpoint):
    desc = describe_tree("merl")
    assert (desc["variant"], desc["config"]) == ("checkpoint", "vit_tiny")
    # every key of the released state dict but the constant an older transformers saved
    released = load_state_dict(full_checkpoint[0])
    assert len(desc["keys"]) == 367
    assert set(desc["keys"]) == set(released) - {"lm_model.embeddings.position_ids"}
    for name, shape in RELEASED_SHAPES.items():
        assert tuple(desc["keys"][name]) == shape, name
    assert desc["parameters"] == 115_432_576


def test_tree_of_the_resnet_encoder(merl_tree):
    keys = describe_tree("merl", "checkpoint", "resnet18")["keys"]
    for name, shape in RELEASED_RESNET_SHAPES.items():
        assert tuple(keys[name]) == shape, name
    assert not any(k.startswith("proj_e") for k in keys)


def test_tree_refuses_unknown_configs(merl_tree):
    with pytest.raises(ContractError, match="vit_tiny"):
        describe_tree("merl", "checkpoint", "vit_huge")


@pytest.mark.parametrize("config", ["vit_tiny", "resnet18"])
def test_reference_tree_round_trips_through_safetensors(merl_tree, tmp_path, config):
    from safetensors.torch import save_file

    from models.ecg.merl import _rebuild_buffer

    torch.manual_seed(0)
    fresh = build_merl_tree("reference", config)  # real tensors, random values
    save_file(fresh.state_dict(), tmp_path / "model.safetensors")
    state = load_state_dict(tmp_path)
    tree, _ = build_tree("merl", "reference", config)
    strict_load(tree, state, what=f"merl {config}")
    materialize_meta_buffers(tree, _rebuild_buffer)
    assert not any(t.is_meta for t in [*tree.parameters(), *tree.buffers()])
    for k, v in fresh.state_dict().items():
        assert torch.equal(tree.state_dict()[k], v), k


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_spec_is_refused_on_a_machine_without_one():
    with pytest.raises(ContractError, match="no CUDA device"):
        build(ModelSpec("merl", "reference-0", variant="reference", device="cuda"))
