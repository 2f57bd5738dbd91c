"""Image features into the language model's input embeddings, the two ways the hosted families
were trained:

- ``expand_placeholders`` (LLaVA-style, Libra ``libra_arch.py``,
  ``prepare_inputs_labels_for_multimodal``): the prompt holds one placeholder id per image
  (``IMAGE_TOKEN_INDEX`` = -200, never a real token); each is replaced by that image's N
  feature vectors, so the sequence grows by N - 1;
- ``fill_context`` (InternVL ``modeling_internvl_chat.py``, ``generate``): the prompt already
  holds one ``<IMG_CONTEXT>`` token per feature vector; their embeddings are overwritten in
  order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.base import ContractError

IMAGE_TOKEN_INDEX = -200  # Libra ``libra/constants.py``


def expand_placeholders(embed: nn.Module, ids: Sequence[int], features: Sequence[torch.Tensor],
                        placeholder: int = IMAGE_TOKEN_INDEX) -> torch.Tensor:
    """(1, L', D) embeddings: the text ids embedded, each placeholder replaced by the next
    (N_i, D) block of ``features``."""
    return expand_all(embed, ids, {placeholder: features})


def expand_all(embed: nn.Module, ids: Sequence[int],
               blocks: dict[int, Sequence[torch.Tensor]]) -> torch.Tensor:
    """``expand_placeholders`` for several kinds of placeholder at once (MedPLIB: an image at
    -200 and a region feature at -300): the i-th occurrence of a placeholder id takes the
    i-th (N, D) block given for it."""
    weight = embed.weight
    for placeholder, given in blocks.items():
        found = sum(1 for t in ids if t == placeholder)
        if found != len(given):
            raise ContractError(f"the prompt holds {found} placeholders {placeholder} for "
                                f"{len(given)} feature blocks")
    taken = dict.fromkeys(blocks, 0)
    parts: list[torch.Tensor] = []
    start = 0
    for pos, t in enumerate(ids):
        if t not in blocks:
            continue
        block = blocks[t][taken[t]]
        taken[t] += 1
        if block.dim() != 2 or block.shape[1] != weight.shape[1]:
            raise ContractError(f"features of shape {tuple(block.shape)} do not fit an "
                                f"embedding width of {weight.shape[1]}")
        if pos > start:
            parts.append(embed(torch.tensor(ids[start:pos], device=weight.device)))
        parts.append(block.to(weight.device, weight.dtype))
        start = pos + 1
    if start < len(ids):
        parts.append(embed(torch.tensor(ids[start:], device=weight.device)))
    return torch.cat(parts, dim=0)[None]


def fill_context(embed: nn.Module, ids: Sequence[int], features: torch.Tensor,
                 context_id: int) -> torch.Tensor:
    """(1, L, D) embeddings with the ``context_id`` positions overwritten by ``features``
    (M, D), M being the number of those positions."""
    weight = embed.weight
    tokens = torch.tensor(list(ids), device=weight.device)
    selected = tokens == context_id
    count = int(selected.sum())
    flat = features.reshape(-1, features.shape[-1])
    if count != flat.shape[0]:
        raise ContractError(f"the prompt holds {count} image-context tokens for "
                            f"{flat.shape[0]} feature vectors")
    out = embed(tokens).clone()
    out[selected] = flat.to(out.device, out.dtype)
    return out[None]


def tokenize_with_placeholder(prompt: str, tokenizer: Any, image_text: str = "<image>",
                              placeholder: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """Libra's ``tokenizer_image_token``: each chunk between ``<image>`` marks is encoded on its
    own (so it tokenizes exactly as in training), the chunks after the first lose the bos the
    tokenizer put in front, and a placeholder id stands between them."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(image_text)]
    bos = tokenizer.bos_token_id
    keep_bos = bool(chunks and chunks[0] and bos is not None and chunks[0][0] == bos)
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(placeholder)
        ids.extend(chunk[1:] if keep_bos and i and chunk and chunk[0] == bos else chunk)
    return ids
