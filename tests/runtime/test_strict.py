"""Strict loading: a matching state dict loads (into a meta-built module too), a mismatch is
refused with counts and the first names of each kind, and meta buffers are rebuilt or named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.base import ContractError
from models.runtime.strict import (
    StrictLoadError,
    compare_state,
    materialize_meta_buffers,
    strict_load,
)


class Net(nn.Module):
    def __init__(self, width: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.head = nn.Linear(width, 3)
        # an index constant, not saved: a meta-built module must get it rebuilt
        self.register_buffer("positions", torch.arange(width), persistent=False)


def test_a_matching_state_loads_into_a_meta_module():
    torch.manual_seed(0)
    state = Net().state_dict()
    with torch.device("meta"):
        net = Net()
    assert compare_state(net, state) == ([], [], [])
    strict_load(net, state, what="test net")
    assert torch.equal(net.head.weight, state["head.weight"])
    assert net.positions.is_meta
    materialize_meta_buffers(net, lambda name, buf: torch.arange(buf.shape[0]))
    assert torch.equal(net.positions, torch.arange(4))
    assert "positions" not in net.state_dict()  # still non-persistent


def test_assign_false_copies_into_the_modules_tensors():
    state = {k: torch.zeros_like(v) for k, v in Net().state_dict().items()}
    net = Net()
    before = net.head.weight
    strict_load(net, state, assign=False)
    assert net.head.weight is before and not before.any()


def test_a_mismatch_reports_counts_and_names():
    state = Net().state_dict()
    del state["layers.0.weight"], state["layers.1.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(4, 3)
    with torch.device("meta"):
        net = Net()
    with pytest.raises(StrictLoadError) as err:
        strict_load(net, state, what="merl vit_tiny")
    assert str(err.value) == (
        "the checkpoint does not match the merl vit_tiny module tree: 2 missing, 1 unexpected, "
        "1 mis-shaped; missing: layers.0.weight, layers.1.bias; unexpected: extra.weight; "
        "mis-shaped: head.weight (expected [3, 4], got [4, 3])")
    assert err.value.missing == ["layers.0.weight", "layers.1.bias"]
    assert err.value.unexpected == ["extra.weight"]
    assert err.value.mismatched == [("head.weight", (3, 4), (4, 3))]
    assert isinstance(err.value, ContractError)


def test_only_the_first_ten_names_are_listed():
    with torch.device("meta"):
        net = Net(layers=12)
    state = {f"junk{i}": torch.zeros(1) for i in range(13)}
    with pytest.raises(StrictLoadError) as err:
        strict_load(net, state)
    msg = str(err.value)
    assert "26 missing, 13 unexpected, 0 mis-shaped" in msg
    assert "junk9" in msg and "junk10" not in msg and "and 3 more" in msg
    assert "and 16 more" in msg  # missing: ten of 26 listed
    assert "mis-shaped:" not in msg
    assert len(err.value.missing) == 26 and len(err.value.unexpected) == 13


def test_an_unknown_meta_buffer_is_named():
    state = Net().state_dict()
    with torch.device("meta"):
        net = Net()
    strict_load(net, state)
    with pytest.raises(StrictLoadError, match="buffer positions is neither in the checkpoint"):
        materialize_meta_buffers(net, lambda name, buf: None)
    with pytest.raises(StrictLoadError, match="buffer positions was rebuilt with shape"):
        materialize_meta_buffers(net, lambda name, buf: torch.arange(5))


def test_nested_buffers_are_rebuilt_in_their_owner():
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Net()

    state = Outer().state_dict()
    with torch.device("meta"):
        outer = Outer()
    strict_load(outer, state)
    seen: list[str] = []
    materialize_meta_buffers(outer, lambda name, buf: seen.append(name) or torch.zeros(4))
    assert seen == ["inner.positions"] and not outer.inner.positions.is_meta
