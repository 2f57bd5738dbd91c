"""Strict state-dict loading with a message that says what differs.

``load_state_dict(strict=True)`` reports a mismatch as one long RuntimeError; a registration
that fails needs the counts and the first names, so the wrong checkpoint or the wrong config is
recognised at a glance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from models.base import ContractError

# Names listed per kind of difference; the counts tell the rest.
LISTED = 10

Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]


class StrictLoadError(ContractError):
    """A state dict that does not match the module tree it is loaded into."""

    def __init__(self, message: str, missing: list[str] | None = None,
                 unexpected: list[str] | None = None,
                 mismatched: list[Mismatch] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])


def compare_state(module: nn.Module, state: Mapping[str, torch.Tensor]
                  ) -> tuple[list[str], list[str], list[Mismatch]]:
    """(missing, unexpected, mis-shaped) keys of ``state`` against ``module.state_dict()``.

    Only names and shapes are compared, so ``module`` may live on the meta device.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(v.shape), tuple(state[k].shape)) for k, v in expected.items()
                  if k in state and tuple(v.shape) != tuple(state[k].shape)]
    return missing, unexpected, mismatched


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str = "model",
                assign: bool = True) -> None:
    """Load ``state`` into ``module`` with ``strict=True``, or raise ``StrictLoadError``.

    ``assign=True`` (the default) takes the checkpoint's tensors as they are instead of copying
    them into the module's, which is what a module built on the meta device needs.
    """
    missing, unexpected, mismatched = compare_state(module, state)
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing, {len(unexpected)} unexpected, "
                 f"{len(mismatched)} mis-shaped"]
        if missing:
            parts.append(f"missing: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_listed(unexpected)}")
        if mismatched:
            shaped = [f"{k} (expected {list(e)}, got {list(g)})" for k, e, g in mismatched]
            parts.append(f"mis-shaped: {_listed(shaped)}")
        raise StrictLoadError(f"the checkpoint does not match the {what} module tree: "
                              + "; ".join(parts), missing, unexpected, mismatched)
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:  # e.g. a module's own _load_from_state_dict check
        raise StrictLoadError(f"the checkpoint does not load into the {what} module tree: "
                              f"{exc}") from exc


def materialize_meta_buffers(module: nn.Module,
                             rebuild: Callable[[str, torch.Tensor], torch.Tensor | None]) -> None:
    """Give real values to the buffers still on the meta device after an assign-load.

    Non-persistent buffers (position indices and the like) are not in a state dict, so a module
    built on meta keeps them empty. ``rebuild(name, meta_buffer)`` returns the value, or None
    when it does not know the buffer, which is then refused by name.
    """
    for name, buf in list(module.named_buffers()):
        if not buf.is_meta:
            continue
        value = rebuild(name, buf)
        if value is None:
            raise StrictLoadError(f"buffer {name} is neither in the checkpoint nor rebuildable",
                                  missing=[name])
        if tuple(value.shape) != tuple(buf.shape):
            raise StrictLoadError(f"buffer {name} was rebuilt with shape {list(value.shape)}, "
                                  f"the module expects {list(buf.shape)}",
                                  mismatched=[(name, tuple(buf.shape), tuple(value.shape))])
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        persistent = leaf not in owner._non_persistent_buffers_set
        owner.register_buffer(leaf, value, persistent=persistent)
