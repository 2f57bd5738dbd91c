"""Diagnosis-driven prompting and decoding for PromptMRG (``BLIP_Decoder.generate``).

The 18 predicted states become the text ``"[S1] [S2] ... [S18] "``; its tokens (``[CLS]``, the
18 state tokens, ``[SEP]``) have the first replaced by the bos token ``[DEC]`` and the trailing
``[SEP]`` dropped, giving a forced prefix of 19 tokens. Decoding then continues it:

- beam search as transformers 4.25 does it (``BeamSearchScorer``, ``num_beams`` 3, length
  penalty 1.0, no early stopping), on log-probabilities;
- greedy decoding when ``num_beams`` is 1 (interactive use);
- ``min_length`` counts the prefix, as transformers' ``min_length`` does for a decoder-only
  model: ``[SEP]`` (eos) is forbidden while the sequence, prefix included, is shorter;
  ``max_new_tokens`` counts the tokens after the prefix (the authors pass ``max_new_tokens``);
- repetition penalty (1.0 in the release: no effect) as transformers applies it;
- a time limit: past ``timeout_s`` the best hypothesis so far is returned, marked ``timeout``.

The text is what follows the prefix, decoded without special tokens (the authors decode the
whole sequence and cut ``len(prompt)`` characters, which removes the same thing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.base import ContractError
from models.cxr.promptmrg.net import Cache, TextDecoder, reorder_cache
from models.cxr.promptmrg.tree import STATE_TOKENS

Stop = Literal["eos", "max_length", "timeout"]


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = 3
    min_length: int = 100
    max_new_tokens: int = 150
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1 or self.min_length < 0:
            raise ContractError("generation needs num_beams >= 1, max_new_tokens >= 1 and "
                                "min_length >= 0")
        if self.repetition_penalty <= 0:
            raise ContractError("repetition_penalty must be positive")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GenerationSettings:
        known = {"num_beams", "min_length", "max_new_tokens", "repetition_penalty",
                 "length_penalty", "timeout_s"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ContractError(f"unknown generation settings {unknown}; known: {sorted(known)}")
        return cls(**cfg)


@dataclass(frozen=True)
class Generated:
    ids: list[int]  # the whole sequence, prefix included, without the final eos
    prefix_length: int
    stopped: Stop
    steps: int

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prefix_length:]


def state_prompt(states: Sequence[int]) -> str:
    """The authors' prompt text: one state token per label, space-separated, trailing space."""
    return " ".join(STATE_TOKENS[int(s)] for s in states) + " "


def build_prefix(states: Sequence[int], tokenizer: Any) -> list[int]:
    """Token ids of the forced prefix: ``[DEC]`` then one state token per label."""
    ids = list(tokenizer(state_prompt(states)).input_ids)
    ids[0] = tokenizer.bos_token_id
    ids = ids[:-1]
    if len(ids) != len(states) + 1:
        raise ContractError(f"the state prompt tokenised into {len(ids)} prefix tokens, not "
                            f"{len(states) + 1}: the tokenizer lacks the state tokens")
    return ids


def strip_prefix(ids: Sequence[int], prefix_length: int, tokenizer: Any) -> str:
    """The report text: the tokens after the prefix, special and state tokens dropped."""
    drop = {tokenizer.convert_tokens_to_ids(t) for t in STATE_TOKENS}
    body = [i for i in ids[prefix_length:] if i not in drop]
    return tokenizer.decode(body, skip_special_tokens=True).strip()


def _penalise(scores: torch.Tensor, seqs: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, seqs)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, seqs, seen)


def _forbid_eos(scores: torch.Tensor, cur_len: int, s: GenerationSettings, eos: int
                ) -> torch.Tensor:
    if cur_len < s.min_length:
        scores[:, eos] = float("-inf")
    return scores


class _Hypotheses:
    """Finished beams, kept best ``n`` by sum of log-probabilities / length ** penalty."""

    def __init__(self, n: int, length_penalty: float) -> None:
        self.n, self.lp = n, length_penalty
        self.items: list[tuple[float, list[int]]] = []

    @property
    def worst(self) -> float:
        return min(s for s, _ in self.items) if self.items else 1e9

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        score = sum_logprobs / (len(ids) ** self.lp)
        if len(self.items) < self.n or score > self.worst:
            self.items.append((score, ids))
            if len(self.items) > self.n:
                self.items.remove(min(self.items, key=lambda x: x[0]))

    def done(self, best_sum: float, cur_len: int) -> bool:
        return len(self.items) >= self.n and self.worst >= best_sum / (cur_len ** self.lp)


@torch.no_grad()
def generate(decoder: TextDecoder, prefix: Sequence[int], image_embeds: torch.Tensor,
             settings: GenerationSettings, eos_id: int) -> Generated:
    """Continue ``prefix`` over the patch features ``image_embeds`` (1, N, C): beam search, or
    greedy decoding when ``settings.num_beams`` is 1. One study at a time."""
    if image_embeds.shape[0] != 1:
        raise ContractError("PromptMRG decodes one study at a time")
    deadline = None if settings.timeout_s is None else time.monotonic() + settings.timeout_s
    nb = settings.num_beams
    max_length = len(prefix) + settings.max_new_tokens
    device = image_embeds.device
    cross = decoder.cross_kv(image_embeds.expand(nb, -1, -1))
    seqs = torch.tensor([list(prefix)] * nb, dtype=torch.long, device=device)
    logits, cache = decoder.step(seqs, None, cross)
    if nb == 1:
        return _greedy(decoder, seqs, logits, cache, cross, settings, eos_id, max_length,
                       len(prefix), deadline)
    beam_scores = torch.full((nb,), -1e9, device=device)
    beam_scores[0] = 0.0  # every beam starts as the prefix: expand only the first at step one
    hyps = _Hypotheses(nb, settings.length_penalty)
    steps, stopped = 0, "max_length"
    cache_: Cache = cache
    while True:
        cur_len = seqs.shape[1]
        scores = torch.log_softmax(logits.float(), dim=-1)
        scores = _forbid_eos(_penalise(scores, seqs, settings.repetition_penalty), cur_len,
                             settings, eos_id)
        scores = scores + beam_scores[:, None]
        vocab = scores.shape[1]
        top, idx = torch.topk(scores.view(-1), 2 * nb)
        chosen: list[tuple[float, int, int]] = []
        for rank, (score, flat) in enumerate(zip(top.tolist(), idx.tolist(), strict=True)):
            beam, token = divmod(flat, vocab)
            if token == eos_id:
                if rank < nb:
                    hyps.add(seqs[beam].tolist(), score)
                continue
            chosen.append((score, beam, token))
            if len(chosen) == nb:
                break
        done = hyps.done(float(top.max()), cur_len)
        beams = torch.tensor([b for _, b, _ in chosen], device=device)
        tokens = torch.tensor([[t] for _, _, t in chosen], device=device)
        beam_scores = torch.tensor([s for s, _, _ in chosen], device=device)
        seqs = torch.cat([seqs.index_select(0, beams), tokens], dim=1)
        steps += 1
        if done:
            stopped = "eos"
            break
        if seqs.shape[1] >= max_length:
            break
        if deadline is not None and time.monotonic() > deadline:
            stopped = "timeout"
            break
        logits, cache_ = decoder.step(tokens, reorder_cache(cache_, beams), cross)
    if not done:
        for b in range(nb):
            hyps.add(seqs[b].tolist(), float(beam_scores[b]))
    best = max(hyps.items, key=lambda x: x[0])[1]
    return Generated(best, len(prefix), stopped, steps)  # type: ignore[arg-type]


def _greedy(decoder: TextDecoder, seqs: torch.Tensor, logits: torch.Tensor, cache: Cache,
            cross: Cache, settings: GenerationSettings, eos_id: int, max_length: int,
            prefix_length: int, deadline: float | None) -> Generated:
    steps, stopped = 0, "max_length"
    while True:
        scores = _penalise(logits.float(), seqs, settings.repetition_penalty)
        token = int(_forbid_eos(scores, seqs.shape[1], settings, eos_id).argmax(-1))
        steps += 1
        if token == eos_id:
            stopped = "eos"
            break
        seqs = torch.cat([seqs, seqs.new_tensor([[token]])], dim=1)
        if seqs.shape[1] >= max_length:
            break
        if deadline is not None and time.monotonic() > deadline:
            stopped = "timeout"
            break
        logits, cache = decoder.step(seqs[:, -1:], cache, cross)
    return Generated(seqs[0].tolist(), prefix_length, stopped, steps)  # type: ignore[arg-type]
