"""Libra's configurations and its module tree for ``medgate models inspect``.

The checkpoint configs are the released models of the Libra README ("Libra-v1.0" table,
0d6c56a): ``7b`` on Meditron-7B (a Llama-2-7B continued-pretraining; its tokenizer has 32,017
entries, the Llama 32,000 plus Meditron's added tokens) and ``3b`` on Llama-3.2-3B-Instruct
(tied embeddings, llama3 RoPE scaling), both with RAD-DINO (DINOv2-base at 518 px) and the TAC.
A mounted checkpoint's own ``config.json`` is what the engine builds from; these named configs
are what ``inspect`` shows without one. ``REFERENCE_CONFIG`` keeps the TAC exactly (it needs 12
encoder layers) with a tiny encoder and a tiny Llama.

Light to import (no torch).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from models.runtime.tree import TreeSpec

if TYPE_CHECKING:
    from torch import nn

FAMILY = "libra"

# microsoft/rad-dino config.json (Dinov2Config): DINOv2-base, patch 14, trained at 518 px.
RAD_DINO = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "patch_size": 14, "image_size": 518, "mlp_ratio": 4, "layer_norm_eps": 1e-6}
# epfl-llm/meditron-7b (Llama-2-7B architecture)
MEDITRON_7B = {"vocab_size": 32017, "hidden_size": 4096, "intermediate_size": 11008,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
               "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
               "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
# meta-llama/Llama-3.2-3B-Instruct
LLAMA_32_3B = {"vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192,
               "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
               "head_dim": 128, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
               "rope_theta": 500000.0, "tie_word_embeddings": True,
               "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192},
               "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}

# What every Libra version runs with unless its registered config says otherwise.
BASE_CONFIG: dict[str, Any] = {
    "image_size": 518,
    "template": None,  # None: libra_llama_3 when the tokenizer has <|eot_id|>, else libra_v1
    # the README's example query (run_libra.py prepends "<image>\n")
    "query": "Provide a detailed description of the findings in the radiology image.",
    # libra_eval's defaults: sampling at temperature 0.2, 128 new tokens, stop at sep2; the
    # authors' other setting is {"strategy": "beam", "num_beams": 5, "length_penalty": 2.0,
    # "no_repeat_ngram_size": 3}
    "generation": {"strategy": "sample", "temperature": 0.2, "max_new_tokens": 128,
                   "timeout_s": 300.0, "seed": 0},
    "vision_tower_dir": None,
}

CHECKPOINT_CONFIGS: dict[str, dict[str, Any]] = {
    "7b": {"llm": MEDITRON_7B, "vision": RAD_DINO, "template": "libra_v1"},
    "3b": {"llm": LLAMA_32_3B, "vision": RAD_DINO, "template": "libra_llama_3"},
}

REFERENCE_CONFIG: dict[str, Any] = {
    **copy.deepcopy(BASE_CONFIG),
    "image_size": 56,
    "template": "libra_v1",
    "generation": {"strategy": "greedy", "max_new_tokens": 24, "timeout_s": 60.0, "seed": 0},
    "vision": {"hidden_size": 32, "num_hidden_layers": 12, "num_attention_heads": 2,
               "patch_size": 14, "image_size": 56, "mlp_ratio": 2, "layer_norm_eps": 1e-6},
    # vocab_size, bos/eos/pad ids come from the reference tokenizer when the engine loads
    "llm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "seed": 0,
    "tokenizer_vocab": 400,
}


def build_libra_tree(variant: str, config_name: str) -> nn.Module:
    from models.vlm.libra.net import build_libra

    if variant == "checkpoint":
        return build_libra(CHECKPOINT_CONFIGS[config_name])
    cfg = copy.deepcopy(REFERENCE_CONFIG)
    cfg["llm"]["vocab_size"] = int(cfg["tokenizer_vocab"])
    return build_libra(cfg)


LIBRA_TREE = TreeSpec(family=FAMILY, build=build_libra_tree, configs=("7b", "3b"),
                      default_config="7b")
