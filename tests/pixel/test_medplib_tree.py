"""The MedPLIB module tree: the released checkpoint's names and shapes on the meta device, a
strict round trip of reference weights, and the pieces the engine calls.

What the authors' code produces is rebuilt here from independent sources: the language model is
transformers' own ``LlamaForCausalLM`` and the CLIP tower transformers' own ``CLIPVisionModel``
(under the transformers 4 ``vision_model`` level); the DeepSpeed MoE names are those of
deepspeed 0.13.1 (``moe/layer.py`` ``MoE.deepspeed_moe``, ``moe/sharded_moe.py``
``MOELayer.gate`` / ``.experts`` and ``TopKGate.wg``, ``moe/experts.py``
``Experts.deepspeed_experts``), and the roots of the tree those of ``ShawnHuang497/MedPLIB`` at
9c3efe9 (table below).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from models.base import ContractError
from models.pixel.net import buffer_rebuilder, build_medplib, moe_settings
from models.pixel.sam import build_sam_med2d
from models.pixel.tree import (
    ADDED_TOKENS,
    CHECKPOINT_CONFIGS,
    MEDPLIB_TREE,
    REFERENCE_CONFIG,
    build_medplib_tree,
)
from models.runtime.checkpoint import load_state_dict
from models.runtime.strict import StrictLoadError, materialize_meta_buffers, strict_load
from models.vlm.hub import save_folder
from models.vlm.reference import init_reference_weights
from tests.conftest import ROOT

# Where each part of MedPLIB's state dict sits, from ShawnHuang497/MedPLIB at 9c3efe9:
#   model/medplib/model/language_model/medplib_moe_llama.py  MedPLIBMoELlamaForCausalLM: the Llama
#       (model.embed_tokens, model.layers, model.norm, lm_head); model.layers.N.mlp replaced by
#       deepspeed.moe.layer.MoE for each of config.moe["moe_layers_idx"]
#   model/medplib/model/medplib_arch.py  LlavaMetaModel.__init__: vision_tower (CLIPVisionTower of
#       multimodal_encoder/clip_encoder.py, which holds CLIPVisionModel as .vision_tower),
#       mm_projector (multimodal_projector/builder.py), region_fea_adapter
#   model/MedPLIB.py  MedPLIBMetaModel.initialize_bird_modules: visual_model (build_sam_vit_b),
#       text_hidden_fcs; MedPLIBForCausalLM sets self.model = MedPLIBModel(...), so all of these
#       sit under "model."
AUTHORS_ROOTS = {
    "model.embed_tokens.": 1,
    "model.layers.": 32 * (9 - 3 + 7),  # attention 4, norms 2, MoE gate 1 + 2 experts x 3
    "model.norm.": 1,
    "lm_head.": 1,
    "model.vision_tower.vision_tower.vision_model.": 391,
    "model.mm_projector.": 4,  # mlp2x_gelu: Linear, GELU, Linear
    "model.region_fea_adapter.": 2,
    "model.text_hidden_fcs.0.": 4,  # Linear, ReLU, Linear, Dropout(0.0)
    "model.visual_model.": None,  # SAM-Med2D ViT-B, counted from models.pixel.sam
}
EXPERT_SHAPES = {"gate_proj.weight": (11008, 4096), "up_proj.weight": (11008, 4096),
                 "down_proj.weight": (4096, 11008)}


def _meta(build):
    with torch.device("meta"):
        return build()


def _shapes(module, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tree():
    return _meta(lambda: build_medplib_tree("checkpoint", "7b"))


@pytest.fixture(scope="module")
def keys(tree):
    return _shapes(tree)


def _reference_cfg(vocab: int = 300) -> dict:
    cfg = copy.deepcopy(REFERENCE_CONFIG)
    cfg["llm"]["vocab_size"] = vocab
    return cfg


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = build_medplib(_reference_cfg()).eval()
    init_reference_weights(model, 0)
    return model


def test_the_7b_tree_has_the_released_key_roots_count_and_size(tree, keys):
    sam = _meta(lambda: build_sam_med2d(CHECKPOINT_CONFIGS["7b"]["sam"]))
    roots = dict(AUTHORS_ROOTS, **{"model.visual_model.": len(sam.state_dict())})
    counted = {root: sum(k.startswith(root) for k in keys) for root in roots}
    assert counted == roots
    assert len(keys) == sum(roots.values()) == 1206
    # 11.69 B: the Llama with two experts per layer 11,069,386,752, CLIP-L/14-336 303,507,456,
    # mm_projector 20,979,712, region_fea_adapter 4,198,400, text_hidden_fcs 17,830,144 and
    # SAM-Med2D ViT-B with its adapters 271,241,776 (buffers are not parameters)
    parts = {"model.vision_tower.": 303_507_456, "model.mm_projector.": 20_979_712,
             "model.region_fea_adapter.": 4_198_400, "model.text_hidden_fcs.": 17_830_144,
             "model.visual_model.": 271_241_776}
    named = dict(tree.named_parameters())
    for root, n in parts.items():
        assert sum(p.numel() for k, p in named.items() if k.startswith(root)) == n, root
    assert _params(sam) == parts["model.visual_model."]
    assert _params(tree) == 11_687_144_240
    assert _params(tree) - sum(parts.values()) == 11_069_386_752


def test_every_decoder_mlp_is_a_two_expert_deepspeed_moe(tree, keys):
    assert sorted(tree.moe_layers()) == list(range(32))
    for i in range(32):
        layer = f"model.layers.{i}.mlp."
        got = {k.removeprefix(layer): v for k, v in keys.items() if k.startswith(layer)}
        want = {"deepspeed_moe.gate.wg.weight": (2, 4096)}
        for e in (0, 1):
            want.update({f"deepspeed_moe.experts.deepspeed_experts.{e}.{k}": v
                         for k, v in EXPERT_SHAPES.items()})
        assert got == want, i
    assert not any("coefficient" in k or ".mlp.mlp." in k for k in keys)


def test_the_vocabulary_holds_the_added_tokens(keys):
    assert len(ADDED_TOKENS) == 9 + 256 + 2 == len(set(ADDED_TOKENS))
    assert ADDED_TOKENS[:9] == ("<SEG>", "<ref>", "</ref>", "<region>", "</region>", "<sr>",
                                "</sr>", "<mask>", "</mask>")
    assert ADDED_TOKENS[9] == "<gen_1>" and ADDED_TOKENS[264] == "<gen_256>"
    assert ADDED_TOKENS[-2:] == ("<im_start>", "<im_end>")
    assert keys["model.embed_tokens.weight"] == (32267, 4096)
    assert keys["lm_head.weight"] == (32267, 4096)


def test_clip_keys_are_transformers_clip_vision_model_under_the_v4_prefix(keys):
    clip = _meta(lambda: CLIPVisionModel(CLIPVisionConfig(**CHECKPOINT_CONFIGS["7b"]["vision"])))
    want = _shapes(clip, "model.vision_tower.vision_tower.vision_model.")
    assert {k: v for k, v in keys.items() if k.startswith("model.vision_tower.")} == want
    assert want["model.vision_tower.vision_tower.vision_model.embeddings.position_embedding."
                "weight"] == (577, 1024)


def test_llama_keys_are_transformers_llama_but_the_moe_mlps(keys):
    llama = _shapes(_meta(lambda: LlamaForCausalLM(LlamaConfig(**CHECKPOINT_CONFIGS["7b"]["llm"]))))
    dense_mlp = {k for k in llama if ".mlp." in k}
    assert len(dense_mlp) == 32 * 3
    assert {k: llama[k] for k in llama if k not in dense_mlp} == {
        k: v for k, v in keys.items() if k in llama}
    ours = {k for k in keys if k.startswith(("model.embed_tokens", "model.layers", "model.norm",
                                             "lm_head"))}
    assert ours - set(llama) == {k for k in keys if ".deepspeed_moe." in k}
    assert set(llama) - ours == dense_mlp


def test_the_other_parts_have_the_authors_shapes(keys):
    assert {k: v for k, v in keys.items() if k.startswith(("model.mm_projector.",
                                                           "model.region_fea_adapter.",
                                                           "model.text_hidden_fcs."))} == {
        "model.mm_projector.0.weight": (4096, 1024), "model.mm_projector.0.bias": (4096,),
        "model.mm_projector.2.weight": (4096, 4096), "model.mm_projector.2.bias": (4096,),
        "model.region_fea_adapter.weight": (4096, 1024), "model.region_fea_adapter.bias": (4096,),
        "model.text_hidden_fcs.0.0.weight": (4096, 4096), "model.text_hidden_fcs.0.0.bias": (4096,),
        "model.text_hidden_fcs.0.2.weight": (256, 4096), "model.text_hidden_fcs.0.2.bias": (256,)}
    assert {k.split(".")[2] for k in keys if k.startswith("model.visual_model.")} == {
        "image_encoder", "prompt_encoder", "mask_decoder"}


def test_a_full_size_state_dict_strict_loads_into_a_second_tree(tree):
    second = _meta(lambda: build_medplib_tree("checkpoint", "7b"))
    strict_load(second, tree.state_dict(), what="MedPLIB")
    broken = dict(tree.state_dict())
    broken.pop("model.layers.7.mlp.deepspeed_moe.gate.wg.weight")
    with pytest.raises(StrictLoadError, match="1 missing"):
        strict_load(second, broken, what="MedPLIB")


def test_reference_weights_round_trip_through_safetensors(tmp_path, reference):
    save_folder(reference, {"model_type": "medplib"}, tmp_path / "ckpt", max_shard_bytes=100_000)
    assert len(list((tmp_path / "ckpt").glob("model-*.safetensors"))) > 1
    loaded = _meta(lambda: build_medplib(_reference_cfg()))
    strict_load(loaded, load_state_dict(tmp_path / "ckpt"), what="MedPLIB")
    materialize_meta_buffers(loaded, buffer_rebuilder(loaded))
    loaded.eval()
    fresh_buffers = dict(reference.named_buffers())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k
    for k, v in loaded.named_buffers():
        assert torch.equal(v, fresh_buffers[k]), k
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, 56, 56, generator=gen)
    sam_pixels = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        outs = []
        for model in (reference, loaded):
            visual, raw = model.encode_images(pixels)
            logits = model(inputs_embeds=visual).logits
            prompt = model.seg_prompt(model.model(inputs_embeds=visual).last_hidden_state[:, -1])
            sam = model.model.visual_model
            masks = sam.masks_from_text(sam.image_embeddings(sam_pixels), prompt)
            region = model.region_feature(raw[0], torch.tensor([[0.2, 0.7], [0.5, 0.5]]))
            outs.append((visual, logits, prompt, masks, region))
    # the weights are bitwise equal; tensors read from safetensors may sit at addresses that are
    # not 64-byte aligned, where the CPU kernels round differently (last bits only)
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_encode_images_takes_the_second_to_last_clip_layer_without_cls(reference):
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        visual, raw = reference.encode_images(pixels)
        vit = reference.model.vision_tower.vision_tower.vision_model
        hidden = vit(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert visual.shape == (2, 16, 64) and raw.shape == (2, 16, 32)
    assert len(hidden) == 3
    torch.testing.assert_close(raw, hidden[-2][:, 1:])
    torch.testing.assert_close(visual, reference.model.mm_projector(raw))
    with pytest.raises(ContractError, match="CLIP input"):
        reference.encode_images(torch.zeros(1, 3, 64, 64))


def test_region_feature_samples_the_adapted_map_at_x_y_points(reference):
    raw = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        adapted = reference.model.region_fea_adapter(raw)
        # with align_corners=True, (col / 3, row / 3) is the centre of patch (row, col)
        one = reference.region_feature(raw, torch.tensor([[1 / 3, 0.0]]))
        two = reference.region_feature(raw, torch.tensor([[1 / 3, 0.0], [0.0, 1.0]]))
        other = reference.region_feature(raw, torch.tensor([[0.9, 0.1], [0.6, 0.4]]))
        none = reference.region_feature(raw, torch.zeros(0, 2))
    assert one.shape == (64,)
    torch.testing.assert_close(one, adapted[1])  # row 0, column 1
    torch.testing.assert_close(two, (adapted[1] + adapted[12]) / 2)  # and row 3, column 0
    assert not torch.allclose(two, other)
    assert torch.equal(none, torch.zeros(64))
    with pytest.raises(ContractError):
        reference.region_feature(raw[:10], torch.zeros(1, 2))


def test_seg_prompt_maps_hidden_states_to_the_sam_prompt_width(reference):
    with torch.no_grad():
        out = reference.seg_prompt(torch.randn(3, 5, 64))
    assert out.shape == (3, 5, REFERENCE_CONFIG["sam"]["prompt_embed_dim"]) == (3, 5, 32)


def test_moe_routing_sends_each_token_to_one_expert_scaled_by_its_gate(reference):
    moe = reference.moe_layers()[1]
    experts = moe.deepspeed_moe.experts.deepspeed_experts
    x = torch.randn(1, 12, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        index, weight = moe.route(x)
        probs = torch.softmax(x[0] @ moe.deepspeed_moe.gate.wg.weight.T, dim=-1)
        assert set(index.tolist()) == {0, 1}
        torch.testing.assert_close(weight, probs.max(dim=-1).values)
        out = moe(x)[0]
        for t in range(12):
            want = experts[int(index[t])](x[0, t]) * weight[t]
            torch.testing.assert_close(out[t], want)
        kept = copy.deepcopy(moe)
        kept.deepspeed_moe.experts.deepspeed_experts[1].down_proj.weight.zero_()
        silenced = kept(x)[0]
    to_one = index == 1
    assert torch.count_nonzero(silenced[to_one]) == 0
    torch.testing.assert_close(silenced[~to_one], out[~to_one])
    assert torch.count_nonzero(out[to_one]) > 0


def test_cached_greedy_generation_matches_full_forwards_through_the_moe_layers(reference):
    visual, _ = reference.encode_images(torch.randn(1, 3, 56, 56,
                                                    generator=torch.Generator().manual_seed(5)))
    embed = reference.model.embed_tokens
    prompt = torch.cat([embed(torch.tensor([[1, 5, 6]])), visual, embed(torch.tensor([[7, 8]]))],
                       dim=1)
    with torch.no_grad():
        out = reference.generate(inputs_embeds=prompt, max_new_tokens=6, do_sample=False,
                                 num_beams=1, pad_token_id=0, eos_token_id=None,
                                 attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long))
        ids = out[0]
        full = torch.cat([prompt, embed(ids[None, :-1])], dim=1)
        greedy = reference(inputs_embeds=full).logits[0, prompt.shape[1] - 1:].argmax(-1)
    assert ids.shape == (6,)
    assert torch.equal(greedy, ids)


def test_moe_settings_refuse_what_the_routing_does_not_reproduce():
    base = CHECKPOINT_CONFIGS["7b"]["moe"]
    assert moe_settings(base, 32) == [(i, 2) for i in range(32)]
    assert moe_settings({**base, "moe_layers_idx": None, "moe_mode": "sparse", "num_experts": 2},
                        32) == [
        (i, 2) for i in range(0, 32, 2)]
    for change, match in (({"eval_capacity_factor": 1.5}, "drop tokens"),
                          ({"use_residual": True}, "use_residual"),
                          ({"top_k_experts": 2}, "top-1"),
                          ({"moe_layers_idx": [0, 32]}, "distinct layers"),
                          ({"expert_count": 2}, "unknown keys")):
        with pytest.raises(ContractError, match=match):
            moe_settings({**base, **change}, 32)


def test_the_tree_module_is_light_and_declares_the_family():
    assert MEDPLIB_TREE.family == "medplib" and MEDPLIB_TREE.configs == ("7b",)
    code = ("import sys, models.pixel.tree as t; assert t.MEDPLIB_TREE.family == 'medplib'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
