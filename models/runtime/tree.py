"""A family's declared module tree: the state-dict names and shapes a checkpoint must have.

A family registers a ``TreeSpec`` whose ``build(variant, config_name)`` makes its network;
``describe_tree`` calls it on the meta device, so even a billion-parameter tree costs no memory
and no initialisation. ``medgate models inspect`` shows the result, and a checkpoint can be
checked against it before it is registered. Importing this module does not import torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.base import ContractError, _load_builtin_families


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A family's configuration: ``base`` with a version's ``over`` merged in, nested dicts key
    by key (a version may change one width without restating the rest)."""
    out = copy.deepcopy(base)
    for k, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], val)
        else:
            out[k] = copy.deepcopy(val)
    return out

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TreeSpec:
    family: str
    build: Callable[[str, str], nn.Module]  # (variant, config name) -> module
    configs: tuple[str, ...]
    default_config: str
    variants: tuple[str, ...] = ("checkpoint", "reference")

    def __post_init__(self) -> None:
        if not self.family or not self.configs or not self.variants:
            raise ContractError("a tree spec needs a family, configs and variants")
        if self.default_config not in self.configs:
            raise ContractError(f"{self.family}: default config {self.default_config!r} is not "
                                f"one of {list(self.configs)}")


_TREES: dict[str, TreeSpec] = {}


def register_tree(spec: TreeSpec) -> None:
    """Declare ``spec.family``'s tree; registering again replaces it (a module reload)."""
    _TREES[spec.family] = spec


def tree_families() -> list[str]:
    _load_builtin_families()
    return sorted(_TREES)


def tree_spec(family: str) -> TreeSpec:
    _load_builtin_families()
    if family not in _TREES:
        raise ContractError(f"model family {family!r} declares no module tree; families that "
                            f"do: {sorted(_TREES)}")
    return _TREES[family]


def build_tree(family: str, variant: str = "checkpoint", config: str | None = None
               ) -> tuple[nn.Module, str]:
    """(module on the meta device, config name) of a family's tree."""
    import torch

    spec = tree_spec(family)
    if variant not in spec.variants:
        raise ContractError(f"{family} has the tree variants {list(spec.variants)}, not "
                            f"{variant!r}")
    name = config or spec.default_config
    if name not in spec.configs:
        raise ContractError(f"{family} has the tree configs {list(spec.configs)}, not {name!r}")
    with torch.device("meta"):
        return spec.build(variant, name), name


def describe_tree(family: str, variant: str = "checkpoint", config: str | None = None
                  ) -> dict[str, Any]:
    """{"family", "variant", "config", "parameters", "keys": {state-dict key: shape}}."""
    module, name = build_tree(family, variant, config)
    return {"family": family, "variant": variant, "config": name,
            "parameters": sum(p.numel() for p in module.parameters()),
            "keys": {k: list(v.shape) for k, v in module.state_dict().items()}}
