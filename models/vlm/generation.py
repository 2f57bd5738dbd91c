"""Batch-of-one generation from input embeddings, with the settings as configuration.

``GenerationSettings.from_config`` reads a family's ``generation`` block (greedy, sampling or
beam search; temperature, top-p, beams, length penalty, n-gram blocking, stop strings, new-token
bounds, a time limit and the sampling seed) and refuses unknown keys, so a typo in a registered
version's config fails at registration instead of being ignored. ``generate`` runs the language
model once (no streaming) and says why it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.base import ContractError

Strategy = Literal["greedy", "sample", "beam"]
STRATEGIES = ("greedy", "sample", "beam")


@dataclass(frozen=True)
class GenerationSettings:
    strategy: Strategy = "greedy"
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    stop_strings: tuple[str, ...] = ()
    timeout_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ContractError(f"generation: {what}")

        need(self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, not "
                                          f"{self.strategy!r}")
        need(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "max_new_tokens must be a positive integer")
        need(isinstance(self.min_new_tokens, int)
             and 0 <= self.min_new_tokens <= self.max_new_tokens,
             "min_new_tokens must be between 0 and max_new_tokens")
        need(self.temperature > 0, "temperature must be positive (use strategy 'greedy' for "
                                   "temperature 0)")
        need(self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]")
        need(isinstance(self.num_beams, int) and self.num_beams >= 1, "num_beams must be >= 1")
        need(self.strategy != "beam" or self.num_beams > 1, "beam search needs num_beams > 1")
        need(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0")
        need(self.timeout_s > 0, "timeout_s must be positive")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GenerationSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ContractError(f"generation: unknown setting(s) {unknown}; known: "
                                f"{sorted(known)}")
        return cls(**config)

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stop_strings"] = list(self.stop_strings)
        return out

    def hf_kwargs(self) -> dict[str, Any]:
        """The ``generate`` keyword arguments these settings mean."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                              "min_new_tokens": self.min_new_tokens,
                              "max_time": self.timeout_s,
                              "repetition_penalty": self.repetition_penalty,
                              "no_repeat_ngram_size": self.no_repeat_ngram_size,
                              "do_sample": self.strategy == "sample",
                              "num_beams": self.num_beams if self.strategy == "beam" else 1}
        if self.strategy == "sample":
            kw["temperature"] = self.temperature
            if self.top_p is not None:
                kw["top_p"] = self.top_p
        if self.strategy == "beam":
            kw["length_penalty"] = self.length_penalty
        return kw


@dataclass(frozen=True)
class Generated:
    ids: list[int]
    text: str
    stopped: Literal["eos", "stop_string", "max_new_tokens", "timeout"]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": len(self.ids), "stopped": self.stopped,
                "seconds": round(self.seconds, 3)}


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stops if s and s in text]
    if not cuts:
        return text, False
    return text[:min(cuts)], True


def decode(tokenizer: Any, ids: list[int], keep: tuple[str, ...] = ()) -> str:
    """The text of ``ids`` without special tokens, except those in ``keep`` (MedRegA's
    ``<ref>``/``<box>`` are special tokens of its tokenizer, and are its answer)."""
    if not keep:
        return tokenizer.decode(ids, skip_special_tokens=True)
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for token in tokenizer.all_special_tokens:
        if token not in keep:
            text = text.replace(token, "")
    return text


def generate(lm: Any, embeds: torch.Tensor, settings: GenerationSettings, tokenizer: Any,
             eos_ids: list[int], keep: tuple[str, ...] = ()) -> Generated:
    """Run ``lm.generate`` on (1, L, D) input embeddings; the new tokens, their text (special
    tokens dropped but for ``keep``, cut at the first stop string) and why generation stopped.
    A template's stop string that is one token belongs in ``eos_ids``, so generation ends on
    it."""
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    kwargs = settings.hf_kwargs()
    if settings.stop_strings:
        kwargs.update(stop_strings=list(settings.stop_strings), tokenizer=tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(settings.seed)
        out = lm.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=eos_ids,
                          pad_token_id=pad, use_cache=True, **kwargs)
    seconds = time.perf_counter() - started
    ids = [int(t) for t in out[0].tolist()]
    while ids and ids[-1] == pad and pad not in eos_ids:  # beam padding
        ids.pop()
    ended = bool(ids) and ids[-1] in eos_ids
    body = ids[:-1] if ended else ids
    text, cut = cut_at_stop(decode(tokenizer, body, keep), settings.stop_strings)
    if ended:
        stopped = "eos"
    elif cut:
        stopped = "stop_string"
    elif len(ids) >= settings.max_new_tokens:
        stopped = "max_new_tokens"
    else:
        stopped = "timeout"
    return Generated(ids, text.strip(), stopped, seconds)
