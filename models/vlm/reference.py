"""What a reference configuration needs besides its tree: deterministic random weights and a
small tokenizer made on the spot.

The reference tokenizer is a byte-level BPE trained in-process on a given corpus (the family's
own prompts), with the family's special tokens, so any text (Chinese included) round-trips and
nothing is downloaded. Reference output is random and marked untrained; it exercises the path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

# Parameters that start at one (norm weights, layer scales), by name ending.
ONES = ("lambda1", "ls1", "ls2")


def init_reference_weights(model: nn.Module, seed: int) -> None:
    """Norm weights and layer scales at one, other vectors and scalars at zero, matrices
    normal with variance 1 / fan-in, from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(ONES) or (p.dim() == 1 and name.endswith("weight")):
                p.fill_(1.0)
            elif p.dim() <= 1:
                p.zero_()
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(fan_in, 1)))


def reference_tokenizer(corpus: Iterable[str], special: Sequence[str], *, bos: str, eos: str,
                        pad: str, vocab_size: int = 600, add_bos: bool = True) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus``. ``special`` are single
    tokens that are never split (bos, eos, pad, template and image tokens); with ``add_bos``
    the bos token starts every encoding, as Llama tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    names = list(dict.fromkeys([pad, bos, eos, *special]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=names,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    extra = [s for s in names if s not in (pad, bos, eos)]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   pad_token=pad, additional_special_tokens=extra)
