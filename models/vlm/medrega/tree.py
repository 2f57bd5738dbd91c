"""MedRegA's configurations and its module tree for ``medgate models inspect``.

The checkpoint config is InternVL-Chat-V1-2 as MedRegA fine-tuned it
(``src/shell/internvl_chat_v1_2_hermes2_yi34b_448_finetune_continue_lora.sh``: Hermes-2
template, 448 px, down-sample ratio 0.5, the last ViT layer): InternViT-6B-448px-V1-2 (45
layers of width 3200, 25 heads, RMS norms with query/key normalisation) and
Nous-Hermes-2-Yi-34B (60 layers of width 7168, 56 heads, 8 key-value heads). The vocabulary is
Yi's 64,000 plus the 9 tokens InternVL's fine-tune script adds (``<img>``, ``</img>``,
``<IMG_CONTEXT>``, ``<quad>``, ``</quad>``, ``<ref>``, ``</ref>``, ``<box>``, ``</box>``); a
mounted checkpoint's ``config.json`` is what the engine builds from, these numbers are what
``inspect`` shows without one. ``REFERENCE_CONFIG`` keeps the connector, the pixel shuffle, the
template and the box grammar with a tiny ViT and a tiny Llama.

Light to import (no torch).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from models.runtime.tree import TreeSpec

if TYPE_CHECKING:
    from torch import nn

FAMILY = "medrega"

INTERNVL_CHAT_V1_2: dict[str, Any] = {
    "force_image_size": 448, "downsample_ratio": 0.5, "select_layer": -1, "ps_version": "v1",
    "template": "Hermes-2", "use_thumbnail": False,
    "vision_config": {"hidden_size": 3200, "num_attention_heads": 25, "intermediate_size": 12800,
                      "num_hidden_layers": 45, "patch_size": 14, "image_size": 448,
                      "qkv_bias": False, "qk_normalization": True, "layer_norm_eps": 1e-6},
    "llm_config": {"architectures": ["LlamaForCausalLM"], "vocab_size": 64009,
                   "hidden_size": 7168, "intermediate_size": 20480, "num_hidden_layers": 60,
                   "num_attention_heads": 56, "num_key_value_heads": 8,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                   "rope_theta": 5000000.0, "tie_word_embeddings": False,
                   "bos_token_id": 1, "eos_token_id": 7},
}

# What every MedRegA version runs with unless its registered config says otherwise.
BASE_CONFIG: dict[str, Any] = {
    "dynamic": False, "max_num": 6,  # demo.py: one 448 tile unless --dynamic (max 6 tiles)
    # demo.py: greedy; 5 beams below 20 B parameters, 1 above (the released 40 B); 400 new
    # tokens at most, at least 1; generation ends at <|im_end|>
    "generation": {"strategy": "greedy", "max_new_tokens": 400, "min_new_tokens": 1,
                   "timeout_s": 600.0, "seed": 0},
    # the study-level task when no question is asked: a grounded report of these organs
    "grounded_objects": {"cxr": ["right lung", "left lung"]},
}

REFERENCE_CONFIG: dict[str, Any] = {
    **copy.deepcopy(BASE_CONFIG),
    "model": {
        "force_image_size": 224, "downsample_ratio": 0.5, "select_layer": -1, "ps_version": "v1",
        "template": "Hermes-2", "use_thumbnail": False,
        "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                          "num_hidden_layers": 2, "patch_size": 14, "image_size": 224,
                          "qkv_bias": False, "qk_normalization": True, "layer_norm_eps": 1e-6},
        # vocab_size and the token ids come from the reference tokenizer when the engine loads
        "llm_config": {"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                       "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2,
                       "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                       "rope_theta": 10000.0, "tie_word_embeddings": False},
    },
    "generation": {"strategy": "greedy", "max_new_tokens": 32, "min_new_tokens": 1,
                   "timeout_s": 60.0, "seed": 0},
    "seed": 0,
    "tokenizer_vocab": 700,
}


def build_medrega_tree(variant: str, config_name: str) -> nn.Module:
    from models.vlm.medrega.net import build_medrega

    if variant == "checkpoint":
        return build_medrega(INTERNVL_CHAT_V1_2)
    cfg = copy.deepcopy(REFERENCE_CONFIG["model"])
    cfg["llm_config"]["vocab_size"] = int(REFERENCE_CONFIG["tokenizer_vocab"])
    return build_medrega(cfg)


MEDREGA_TREE = TreeSpec(family=FAMILY, build=build_medrega_tree, configs=("40b",),
                        default_config="40b")
