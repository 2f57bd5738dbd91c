"""A vision-language checkpoint as model hubs lay it out: ``config.json``, safetensors shards
(or ``.bin``) with their index, and the tokenizer files, in one folder.

The engine cache has verified the folder against its registered manifest before an engine is
built; this module reads it without running any of its code (no ``trust_remote_code``), builds
the family's tree on the meta device and loads the weights strictly into it, so a 7- or
40-billion-parameter model is never initialised and then overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.base import ContractError, ModelSpec
from models.runtime.checkpoint import describe, load_state_dict, read_config, save_sharded
from models.runtime.strict import materialize_meta_buffers, strict_load

# Buffers older transformers saved and newer ones recompute (``rotary_emb.inv_freq``): a
# checkpoint holding them is the same model.
RECOMPUTED_SUFFIXES = ("rotary_emb.inv_freq",)


class HubFolder:
    """A checkpoint folder: its config, tokenizer and state dict."""

    def __init__(self, path: str | Path, family: str) -> None:
        self.path = Path(path)
        self.family = family
        if not self.path.is_dir():
            raise ContractError(f"{family} weights must be a checkpoint folder (config.json, "
                                f"safetensors shards, tokenizer files); {self.path} is not one")
        self.layout = describe(self.path)
        self.config = read_config(self.path)

    def tokenizer(self, folder: str | Path | None = None) -> Any:
        """The tokenizer saved with the checkpoint (or in ``folder``), read locally only."""
        from transformers import AutoTokenizer

        where = Path(folder) if folder else self.path
        if folder is None and not self.layout.tokenizer_files:
            raise ContractError(f"{self.family}: {self.path} holds no tokenizer files "
                                "(tokenizer.json or tokenizer.model with tokenizer_config.json)")
        try:
            return AutoTokenizer.from_pretrained(str(where), local_files_only=True,
                                                 trust_remote_code=False)
        except (OSError, ValueError, TypeError) as exc:
            raise ContractError(f"{self.family}: cannot read the tokenizer in {where}: "
                                f"{exc}") from exc

    def state_dict(self, notes: list[str]) -> dict[str, torch.Tensor]:
        state = load_state_dict(self.path, notes=notes)
        dropped = [k for k in state if k.endswith(RECOMPUTED_SUFFIXES)]
        for k in dropped:
            del state[k]
        if dropped:
            notes.append(f"{len(dropped)} recomputed rotary buffers (inv_freq) left out")
        return state


@dataclass
class Variant:
    """What a vision-language engine knows of its spec before ``load()``: where it computes,
    its merged config, whether it is trained, and its hub folder (None for the reference)."""

    device: str
    dtype: torch.dtype
    config: dict[str, Any]
    trained: bool
    hub: HubFolder | None


def variant_of(spec: ModelSpec, family: str, name: str, reference: dict[str, Any],
               base: dict[str, Any]) -> Variant:
    """Check ``spec``: the ``reference`` variant runs ``reference`` (random weights, untrained),
    ``checkpoint`` runs ``base`` with the hub folder at ``spec.weights_path``; the version's
    registered config is merged over either."""
    from models.runtime.device import resolve_device, resolve_dtype
    from models.runtime.tree import merge_config

    if spec.family != family:
        raise ContractError(f"spec is for {spec.family!r}, not {family!r}")
    device = resolve_device(spec.device or "cpu")
    dtype = resolve_dtype(device, spec.dtype)
    if spec.variant == "reference":
        return Variant(device, dtype, merge_config(reference, spec.config), False, None)
    if spec.variant == "checkpoint":
        return Variant(device, dtype, merge_config(base, spec.config), True,
                       HubFolder(str(spec.weights_path), family))
    raise ContractError(f"{name} has a 'reference' and a 'checkpoint' variant, not "
                        f"{spec.variant!r}")


def tie_lm_head(state: dict[str, torch.Tensor], prefix: str, tied: bool,
                notes: list[str]) -> None:
    """A model with ``tie_word_embeddings`` is saved without ``lm_head.weight`` (it is the
    embedding matrix); supply it so the strict load sees the whole tree."""
    head, embed = f"{prefix}lm_head.weight", f"{prefix}model.embed_tokens.weight"
    if tied and head not in state and embed in state:
        state[head] = state[embed]
        notes.append(f"{head} tied to {embed} (tie_word_embeddings)")


def _rebuild_rotary(module: nn.Module) -> Callable[[str, torch.Tensor], torch.Tensor | None]:
    def rebuild(name: str, _buf: torch.Tensor) -> torch.Tensor | None:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if not type(owner).__name__.endswith("RotaryEmbedding"):
            return None
        with torch.device("cpu"):
            fresh = type(owner)(owner.config)
        return getattr(fresh, leaf)
    return rebuild


def load_into(build: Callable[[], nn.Module], state: dict[str, torch.Tensor],
              what: str) -> nn.Module:
    """``build()`` on the meta device, ``state`` loaded strictly (tensors taken as they are),
    the rotary buffers recomputed."""
    with torch.device("meta"):
        model = build()
    strict_load(model, state, what=what)
    materialize_meta_buffers(model, _rebuild_rotary(model))
    return model


def materialise(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` for real on the CPU (a reference model)."""
    with torch.device("cpu"):
        return build()


def save_folder(model: nn.Module, config: dict[str, Any], folder: str | Path,
                tokenizer: Any = None, max_shard_bytes: int = 1 << 30,
                leave_out: tuple[str, ...] = ()) -> Path:
    """Write ``model`` as a hub folder (``config.json``, shards with their index, the
    tokenizer); ``leave_out`` keys are not written (a tied ``lm_head.weight``, as
    ``save_pretrained`` does)."""
    folder = Path(folder)
    state = {k: v for k, v in model.state_dict().items() if k not in leave_out}
    save_sharded(state, folder, max_shard_bytes)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
