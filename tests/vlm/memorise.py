"""Teach a reference-size model one answer, so the whole engine path (image, connector, splice,
generation, parsing) can be checked on output that means something to the test.

Random weights write random tokens; a few hundred optimiser steps on one (input, answer) pair
make a tiny model say exactly that answer for that input. The result is saved as a hub-layout
checkpoint folder and loaded through the family's ``checkpoint`` variant, as a site's weights
would be. It proves the plumbing, never anything clinical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def memorise(model: torch.nn.Module, lm: torch.nn.Module, embeds_of: Callable[[], torch.Tensor],
             answer_ids: list[int], steps: int = 400, lr: float = 3e-3) -> int:
    """Train ``model`` until the LM ``lm`` predicts ``answer_ids`` after the prompt embeddings
    ``embeds_of()`` (rebuilt each step, so the image path is trained too). Returns the steps
    taken; fails when the answer is not learnt."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    target = torch.tensor(answer_ids)
    embed = lm.get_input_embeddings()
    for step in range(1, steps + 1):
        prompt = embeds_of()
        answer = embed(target[:-1])[None]
        logits = lm(inputs_embeds=torch.cat([prompt, answer], dim=1)).logits[0]
        pred = logits[prompt.shape[1] - 1:]
        loss = F.cross_entropy(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bool((pred.argmax(-1) == target).all()) and loss.item() < 0.05:
            model.eval()
            return step
    raise AssertionError(f"the answer was not learnt in {steps} steps (loss {loss.item():.3f})")
