"""The Libra and MedRegA checkpoint trees on the meta device: names and shapes against what the
authors' code builds, and strict loads of saved state dicts.

What the authors' code produces is rebuilt here from independent sources: the language models
are transformers' own ``LlamaForCausalLM``; RAD-DINO is transformers' ``Dinov2Model`` with its
names mapped back to the transformers 4.51 names the Libra release was saved with (transformers
5's own conversion table, ``conversion_mapping.py``, read in reverse); the TAC keys are those of
``class TAC`` in ``libra/model/multimodal_projector/builder.py`` (0d6c56a), whose
``torchvision.ops.SqueezeExcitation`` blocks hold ``fc1``/``fc2``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

from models.runtime.checkpoint import load_state_dict
from models.runtime.strict import StrictLoadError, strict_load
from models.runtime.tree import build_tree, describe_tree
from models.vlm.hub import load_into, save_folder
from models.vlm.libra.net import build_libra
from models.vlm.libra.tree import CHECKPOINT_CONFIGS, RAD_DINO, REFERENCE_CONFIG
from models.vlm.medrega.tree import INTERNVL_CHAT_V1_2
from tests.conftest import ROOT

# transformers 5 -> 4 names of Dinov2Model (the reverse of its WeightRenaming entries)
DINO_V4_NAMES = (("attention.q_proj", "attention.attention.query"),
                 ("attention.k_proj", "attention.attention.key"),
                 ("attention.v_proj", "attention.attention.value"),
                 ("attention.o_proj", "attention.output.dense"))

TAC_KEYS = (
    ["LFE_prior_bias"]
    + [f"LFE.{i}.fc{j}.{p}" for i in (0, 2, 4) for j in (1, 2) for p in ("weight", "bias")]
    + [f"LFE.{i}.weight" for i in (1, 3, 5)]
    + [f"{a}.{p}" for a in ("cur_self_attention", "prior_self_attention", "cros_attention")
       for p in ("in_proj_weight", "in_proj_bias", "bias_k", "bias_v", "out_proj.weight",
                 "out_proj.bias")]
    + [f"norm{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")]
    + [f"mlp_attn.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    + [f"mlp_final.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")])


def _meta(build):
    with torch.device("meta"):
        return build()


def _shapes(module, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _rad_dino_v4_names() -> dict[str, tuple[int, ...]]:
    cfg = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       image_size=518, patch_size=14)
    out = {}
    for k, shape in _shapes(_meta(lambda: Dinov2Model(cfg))).items():
        for new, old in DINO_V4_NAMES:
            k = k.replace(new, old)
        out["model.vision_tower.vision_tower." + k] = shape
    return out


@pytest.mark.parametrize("name", ["7b", "3b"])
def test_libra_checkpoint_tree_has_the_authors_names_and_shapes(name):
    tree, _ = build_tree("libra", "checkpoint", name)
    keys = _shapes(tree)
    cfg = CHECKPOINT_CONFIGS[name]
    llm = _shapes(_meta(lambda: LlamaForCausalLM(LlamaConfig(**cfg["llm"]))))
    vision = _rad_dino_v4_names()
    tac = {k: v for k, v in keys.items() if k.startswith("model.mm_projector.")}
    assert {k: v for k, v in keys.items() if k in llm} == llm
    assert {k: v for k, v in keys.items() if k.startswith("model.vision_tower.")} == vision
    assert sorted(k.removeprefix("model.mm_projector.") for k in tac) == sorted(TAC_KEYS)
    assert set(keys) == set(llm) | set(vision) | set(tac)
    width, hidden = RAD_DINO["hidden_size"], cfg["llm"]["hidden_size"]
    assert tac["model.mm_projector.LFE.0.fc1.weight"] == (6, 12, 1, 1)
    assert tac["model.mm_projector.cros_attention.bias_k"] == (1, 1, width)
    assert tac["model.mm_projector.mlp_final.0.weight"] == (hidden, width)
    assert tac["model.mm_projector.mlp_final.6.weight"] == (hidden, hidden)
    assert keys["model.vision_tower.vision_tower.embeddings.position_embeddings"] == (1, 1370,
                                                                                      768)
    # parameter counts of the published sizes (tied embeddings counted once)
    params = sum(p.numel() for p in tree.parameters())
    assert params == {"7b": 6_886_908_471, "3b": 3_338_292_791}[name]


def test_medrega_checkpoint_tree_has_the_released_names_and_shapes():
    tree, _ = build_tree("medrega", "checkpoint", "40b")
    keys = _shapes(tree)
    llm_cfg = {k: v for k, v in INTERNVL_CHAT_V1_2["llm_config"].items() if k != "architectures"}
    llm = _shapes(_meta(lambda: LlamaForCausalLM(LlamaConfig(**llm_cfg))), "language_model.")
    assert {k: v for k, v in keys.items() if k.startswith("language_model.")} == llm
    assert {k for k in keys if k.startswith("mlp1.")} == {
        "mlp1.0.weight", "mlp1.0.bias", "mlp1.1.weight", "mlp1.1.bias", "mlp1.3.weight",
        "mlp1.3.bias"}
    assert keys["mlp1.0.weight"] == (3200 * 4,)
    assert keys["mlp1.1.weight"] == (7168, 12800)
    layer = "vision_model.encoder.layers.44."
    assert {k.removeprefix(layer): v for k, v in keys.items() if k.startswith(layer)} == {
        "ls1": (3200,), "ls2": (3200,), "attn.qkv.weight": (9600, 3200),
        "attn.q_norm.weight": (3200,), "attn.k_norm.weight": (3200,),
        "attn.proj.weight": (3200, 3200), "attn.proj.bias": (3200,),
        "mlp.fc1.weight": (12800, 3200), "mlp.fc1.bias": (12800,),
        "mlp.fc2.weight": (3200, 12800), "mlp.fc2.bias": (3200,),
        "norm1.weight": (3200,), "norm2.weight": (3200,)}
    assert "vision_model.encoder.layers.45.ls1" not in keys
    assert keys["vision_model.embeddings.position_embedding"] == (1, 1025, 3200)
    assert keys["vision_model.embeddings.class_embedding"] == (1, 1, 3200)
    assert tree.num_image_token == 256
    assert set(keys) == set(llm) | {k for k in keys if k.startswith(("mlp1.", "vision_model."))}
    assert sum(p.numel() for p in tree.parameters()) == 40_068_712_832


@pytest.mark.parametrize(("family", "config"), [("libra", "7b"), ("libra", "3b"),
                                                 ("medrega", "40b")])
def test_a_full_size_state_dict_strict_loads_into_a_second_tree(family, config):
    first, _ = build_tree(family, "checkpoint", config)
    second, _ = build_tree(family, "checkpoint", config)
    strict_load(second, first.state_dict(), what=family)
    broken = dict(first.state_dict())
    broken.pop(next(iter(broken)))
    with pytest.raises(StrictLoadError, match="1 missing"):
        strict_load(second, broken, what=family)


def test_reference_weights_saved_as_a_hub_folder_load_back_exactly(tmp_path):
    cfg = {"llm": {**REFERENCE_CONFIG["llm"], "vocab_size": 300}, "vision":
           REFERENCE_CONFIG["vision"]}
    torch.manual_seed(0)
    fresh = build_libra(cfg)
    save_folder(fresh, {"model_type": "libra"}, tmp_path / "ckpt", max_shard_bytes=200_000)
    assert len(list((tmp_path / "ckpt").glob("model-*.safetensors"))) > 1
    loaded = load_into(lambda: build_libra(cfg), load_state_dict(tmp_path / "ckpt"), "Libra")
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    for k, v in fresh.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    rotary = dict(loaded.named_buffers())["model.rotary_emb.inv_freq"]
    assert torch.equal(rotary, dict(fresh.named_buffers())["model.rotary_emb.inv_freq"])


def test_models_inspect_prints_the_libra_3b_and_medrega_trees():
    for family, config, n in (("libra", "3b", 532), ("medrega", None, 1138)):
        args = [sys.executable, "-m", "app.cli", "models", "inspect", family, "--variant",
                "checkpoint", "--json"] + (["--config", config] if config else [])
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=180)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert len(data["keys"]) == n
        assert data == describe_tree(family, "checkpoint", config)
