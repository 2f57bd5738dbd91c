"""MedPLIB's configurations and its module tree for ``medgate models inspect``.

The checkpoint config is the released ``MedPLIB-7b-2e`` as ``ShawnHuang497/MedPLIB`` at 9c3efe9
trains it (``scripts/train_stage4.sh``, ``train_ds_medplib.py``): LLaVA-v1.5-7B (Vicuna-7B, a
Llama-2-7B) with the vocabulary grown to 32,267, CLIP ViT-L/14-336 taking hidden state -2
without CLS (576 patch tokens), the ``mlp2x_gelu`` projector, the region adapter, the
``<SEG>`` projection into SAM's 256-wide prompt, SAM-Med2D ViT-B at 256 px, and a two-expert
top-1 DeepSpeed MoE in all 32 decoder layers (``--moe_mode dense --num_experts 2
--top_k_experts 1 --capacity_factor 1.5``; ``eval_capacity_factor`` 2, ``min_capacity`` 0 and
``use_residual`` off are the script's defaults). A mounted checkpoint's ``config.json`` is what
an engine builds from; these numbers are what ``inspect`` shows without one.
``REFERENCE_CONFIG`` keeps every part at toy widths.

Light to import (no torch): the SAM blocks come from ``models.pixel.sam``, which imports torch,
so ``CHECKPOINT_CONFIGS`` and ``REFERENCE_CONFIG`` are assembled on first access.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from models.runtime.tree import TreeSpec

if TYPE_CHECKING:
    from torch import nn

FAMILY = "medplib"

# utils/utils.py ADD_OTHERS_TOKENS, then train_ds_medplib.py appends "<gen_1>".."<gen_256>" and,
# with use_mm_start_end, "<im_start>" and "<im_end>"; each is added to the 32,000-entry Llama
# tokenizer in this order, so "<SEG>" is id 32000 and "<im_end>" id 32266.
TASK_TOKENS = ("<SEG>", "<ref>", "</ref>", "<region>", "</region>", "<sr>", "</sr>", "<mask>",
               "</mask>")
GEN_TOKENS = tuple(f"<gen_{i}>" for i in range(1, 257))
IMAGE_MARKS = ("<im_start>", "<im_end>")
ADDED_TOKENS: tuple[str, ...] = TASK_TOKENS + GEN_TOKENS + IMAGE_MARKS
LLAMA_VOCAB = 32000
SEG_TOKEN = "<SEG>"
IMAGE_TOKEN_INDEX = -200  # utils/utils.py: the placeholder for the 576 visual tokens
REGION_TOKEN_INDEX = -300  # utils/utils.py: the placeholder for one region embedding

# LLaVA-v1.5-7B's language model (lmsys/vicuna-7b-v1.5, Llama-2-7B sizes)
VICUNA_7B: dict[str, Any] = {
    "vocab_size": LLAMA_VOCAB + len(ADDED_TOKENS), "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
# openai/clip-vit-large-patch14-336, its vision_config
CLIP_L14_336: dict[str, Any] = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768}
# The authors' config.moe as train_stage4.sh and initialize_moe_modules leave it.
MOE_2E: dict[str, Any] = {
    "moe_enable": True, "moe_mode": "dense", "moe_layers_idx": list(range(32)),
    "num_experts": [2] * 32, "ep_size": 1, "top_k_experts": 1, "capacity_factor": 1.5,
    "eval_capacity_factor": 2.0, "min_capacity": 0, "use_residual": False,
    "router_aux_loss_coef": 0.0}
LLAVA_VISION: dict[str, Any] = {"mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
                                "mm_projector_type": "mlp2x_gelu"}

# What every MedPLIB version runs with unless its registered config says otherwise.
BASE_CONFIG: dict[str, Any] = {
    # conversation: llava_v1 (Vicuna v1 system prompt, "USER"/"ASSISTANT", sep " ", sep2 "</s>"),
    # the image as "<im_start><image><im_end>\n" before the question (use_mm_start_end)
    "template": "llava_v1",
    "use_mm_start_end": True,
    "clip_image_size": 336,
    "sam_image_size": 256,  # --sam_img_size 256
    "max_sample_point": 512,  # region points drawn per mask (rand_sample)
    "seg_token": SEG_TOKEN,
    # MedPLIB.evaluate / chat.py: greedy, one beam, 512 new tokens (vqa_infer.py allows 1024)
    "generation": {"strategy": "greedy", "num_beams": 1, "max_new_tokens": 512,
                   "timeout_s": 600.0, "seed": 0},
}


def _checkpoint_configs() -> dict[str, dict[str, Any]]:
    from models.pixel.sam import SAM_MED2D_VIT_B

    return {"7b": {"llm": copy.deepcopy(VICUNA_7B), "vision": copy.deepcopy(CLIP_L14_336),
                   **copy.deepcopy(LLAVA_VISION), "vision_grid": 24, "moe": copy.deepcopy(MOE_2E),
                   "out_dim": 256, "sam": dict(SAM_MED2D_VIT_B)}}


def _reference_config() -> dict[str, Any]:
    from models.pixel.sam import SAM_REFERENCE

    return {
        **copy.deepcopy(BASE_CONFIG),
        "clip_image_size": 56,
        "sam_image_size": int(SAM_REFERENCE["image_size"]),
        "generation": {"strategy": "greedy", "num_beams": 1, "max_new_tokens": 24,
                       "timeout_s": 60.0, "seed": 0},
        # vocab_size and bos/eos/pad ids come from the reference tokenizer when an engine loads
        "llm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "hidden_act": "silu", "tie_word_embeddings": False},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "image_size": 56, "patch_size": 14,
                   "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 32},
        **copy.deepcopy(LLAVA_VISION),
        "vision_grid": 4,
        "moe": {**copy.deepcopy(MOE_2E), "moe_layers_idx": [0, 1], "num_experts": [2, 2]},
        "out_dim": int(SAM_REFERENCE["prompt_embed_dim"]),
        "sam": dict(SAM_REFERENCE),
        "seed": 0,
        # 256 byte symbols + pad/bos/eos + the 267 added tokens + merges
        "tokenizer_vocab": 800,
    }


_LAZY = {"CHECKPOINT_CONFIGS": _checkpoint_configs, "REFERENCE_CONFIG": _reference_config}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = _LAZY[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_medplib_tree(variant: str, config_name: str) -> nn.Module:
    from models.pixel import tree
    from models.pixel.net import build_medplib

    if variant == "checkpoint":
        return build_medplib(copy.deepcopy(tree.CHECKPOINT_CONFIGS[config_name]))
    cfg = copy.deepcopy(tree.REFERENCE_CONFIG)
    cfg["llm"]["vocab_size"] = int(cfg["tokenizer_vocab"])
    return build_medplib(cfg)


MEDPLIB_TREE = TreeSpec(family=FAMILY, build=build_medplib_tree, configs=("7b",),
                        default_config="7b")
