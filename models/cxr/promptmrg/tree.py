"""PromptMRG's configurations and its module tree for ``medgate models inspect``.

``CHECKPOINT_CONFIG`` is the authors' model: torchvision ResNet-101 (``models/resnet.py``), the
memory transformer of width 512 with 2 + 2 layers, 8 heads, FFN 2048 (``models/blip.py``,
``models/transformer.py``), BLIP's BERT-base decoder read from ``configs/bert_config.json``
with ``encoder_width`` set to 2048, and the bert-base-uncased vocabulary of 30522 plus the bos
token ``[DEC]`` and the four state tokens ``[BLA] [POS] [NEG] [UNC]`` (``main_test.py``):
30527 rows. ``REFERENCE_CONFIG`` keeps the heads (18 labels x 4 states), the memory width (the
512-d report features) and the prefix mechanism at a size two CPU cores run in seconds.

Light to import (no torch), so that ``models.cxr`` can register the tree at import time.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from models.cxr.promptmrg.vocab import (  # noqa: F401 -- re-exported for the engine
    ADDED_TOKENS,
    BERT_VOCAB,
    BOS_TOKEN,
    STATE_TOKENS,
    reference_vocabulary,
)
from models.runtime.tree import TreeSpec, merge_config

if TYPE_CHECKING:
    from torch import nn

FAMILY = "promptmrg"

CHECKPOINT_CONFIG: dict[str, Any] = {
    "image_size": 224, "resize": 256,
    "vision": {"blocks": [3, 4, 23, 3], "width": 64},  # ResNet-101: 2048 output channels
    "memory": {"d_model": 512, "heads": 8, "ffn": 2048, "encoder_layers": 2,
               "decoder_layers": 2, "k": 21},
    "num_labels": 18, "num_states": 4,
    "text": {"vocab_size": BERT_VOCAB + len(ADDED_TOKENS), "hidden_size": 768,
             "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "pad_token_id": 0},
    # test_mimic_cxr.sh / main_test.py: beam 3, min_length 100 (HF counts the prefix),
    # max_new_tokens 150 (after the prefix), repetition penalty 1.0
    "generation": {"num_beams": 3, "min_length": 100, "max_new_tokens": 150,
                   "repetition_penalty": 1.0, "length_penalty": 1.0, "timeout_s": 300.0},
    "tokenizer_dir": None,
    "report_features": None,
    "retrieval": None,
}

REFERENCE_CONFIG: dict[str, Any] = {
    **copy.deepcopy(CHECKPOINT_CONFIG),
    "vision": {"blocks": [1, 1, 1, 1], "width": 8},  # 256 output channels
    "memory": {"d_model": 512, "heads": 8, "ffn": 256, "encoder_layers": 1,
               "decoder_layers": 1, "k": 21},
    # vocab_size is that of the tokenizer in use (the built-in word list unless
    # config["tokenizer_dir"] names another), set when the engine loads
    "text": {"vocab_size": None, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 256, "layer_norm_eps": 1e-12, "pad_token_id": 0},
    "seed": 0,
}


def build_promptmrg_tree(variant: str, config_name: str) -> nn.Module:
    from models.cxr.promptmrg.net import PromptMRG

    if variant == "checkpoint":
        return PromptMRG(CHECKPOINT_CONFIG)
    return PromptMRG(merge_config(REFERENCE_CONFIG,
                           {"text": {"vocab_size": len(reference_vocabulary())}}))


PROMPTMRG_TREE = TreeSpec(family=FAMILY, build=build_promptmrg_tree, configs=("resnet101",),
                          default_config="resnet101")
