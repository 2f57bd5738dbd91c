"""Declared module trees: built on the meta device, described by names and shapes, unknown
families, variants and configs refused with the allowed ones. (MERL's released names and
shapes are checked in tests/ecg/test_ecg_merl.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.base import ContractError
from models.ecg.merl_tree import MERL_TREE
from models.runtime.tree import (
    _TREES,
    TreeSpec,
    build_tree,
    describe_tree,
    register_tree,
    tree_families,
    tree_spec,
)


def build_toy(variant: str, config: str) -> nn.Module:
    width = {"small": 4, "large": 4096}[config] * (2 if variant == "checkpoint" else 1)
    return nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))


@pytest.fixture(autouse=True)
def trees():
    register_tree(TreeSpec("toy", build_toy, configs=("small", "large"), default_config="small"))
    register_tree(MERL_TREE)  # models.ecg registers it on import; again is harmless
    yield
    _TREES.pop("toy")  # the toy family must not show in other tests' listings


def test_describe_tree_defaults_and_counts():
    desc = describe_tree("toy")
    assert (desc["family"], desc["variant"], desc["config"]) == ("toy", "checkpoint", "small")
    assert desc["keys"] == {"0.weight": [8, 8], "0.bias": [8], "1.weight": [8], "1.bias": [8],
                            "1.running_mean": [8], "1.running_var": [8],
                            "1.num_batches_tracked": []}
    assert desc["parameters"] == 8 * 8 + 8 + 8 + 8


def test_a_large_tree_costs_no_memory():
    # 8192 x 8192 float32 would be 256 MiB; on meta it is names and shapes only
    module, name = build_tree("toy", "checkpoint", "large")
    assert name == "large" and all(p.is_meta for p in module.parameters())
    assert describe_tree("toy", "checkpoint", "large")["keys"]["0.weight"] == [8192, 8192]


def test_unknowns_are_refused_with_what_is_allowed():
    with pytest.raises(ContractError, match=r"declares no module tree; families that do: .*toy"):
        tree_spec("nope")
    with pytest.raises(ContractError, match=r"\['checkpoint', 'reference'\], not 'builtin'"):
        describe_tree("toy", "builtin")
    with pytest.raises(ContractError, match=r"\['small', 'large'\], not 'huge'"):
        describe_tree("toy", config="huge")
    with pytest.raises(ContractError, match="default config"):
        TreeSpec("bad", build_toy, configs=("a",), default_config="b")


def test_families_with_trees():
    assert {"toy", "merl"} <= set(tree_families())
    assert tree_spec("merl").configs == ("vit_tiny", "resnet18")


def test_merl_checkpoint_tree_has_the_released_key_count():
    desc = describe_tree("merl", "checkpoint", "vit_tiny")
    assert len(desc["keys"]) == 367
    assert desc["keys"]["ecg_encoder.pos_embedding"] == [1, 100, 192]
    # BERT's index buffers are non-persistent: not keys of a checkpoint
    assert not any(k.endswith(("position_ids", "token_type_ids")) for k in desc["keys"])


def test_a_reference_tree_saved_as_safetensors_loads_into_a_meta_tree(tmp_path):
    from safetensors.torch import save_file

    from models.runtime.checkpoint import load_state_dict
    from models.runtime.strict import strict_load

    torch.manual_seed(0)
    save_file(build_toy("reference", "small").state_dict(), tmp_path / "model.safetensors")
    tree, _ = build_tree("toy", "reference", "small")
    strict_load(tree, load_state_dict(tmp_path), what="toy small")
    assert not any(p.is_meta for p in tree.parameters())
