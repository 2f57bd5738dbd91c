"""Checkpoint layouts and state-dict loading: hub folders (sharded safetensors with an index,
pytorch_model.bin), single files, training checkpoints; shards that disagree with each other or
with their index are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.base import ContractError
from models.runtime.checkpoint import (
    CheckpointError,
    describe,
    load_state_dict,
    read_config,
    save_sharded,
)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
        self.norm = nn.BatchNorm1d(8)


@pytest.fixture
def small() -> Small:
    torch.manual_seed(0)
    return Small()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_round_trip_via_index(tmp_path, small):
    state = small.state_dict()
    shards = save_sharded(state, tmp_path / "m", max_shard_bytes=2048, config={"hidden": 16})
    assert len(shards) > 2
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in state.values())
    assert set(index["weight_map"]) == set(state)
    layout = describe(tmp_path / "m")
    assert layout.kind == "folder" and layout.format == "safetensors"
    assert layout.weight_files == shards and layout.index is not None
    assert read_config(tmp_path / "m") == {"hidden": 16}
    loaded = load_state_dict(tmp_path / "m")
    assert same(loaded, state)
    fresh = Small()
    fresh.load_state_dict(loaded, strict=True)
    assert same(fresh.state_dict(), state)


def test_a_tensor_larger_than_a_shard_gets_its_own(tmp_path):
    state = {"a": torch.zeros(10), "big": torch.zeros(1000), "b": torch.zeros(10)}
    shards = save_sharded(state, tmp_path, max_shard_bytes=100)
    assert len(shards) == 3
    assert same(load_state_dict(tmp_path), state)


def test_a_key_in_two_shards_is_refused(tmp_path):
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "part1.safetensors")
    save_file({"b": torch.ones(2)}, tmp_path / "part2.safetensors")
    assert [p.name for p in describe(tmp_path).weight_files] == ["part1.safetensors",
                                                                 "part2.safetensors"]
    with pytest.raises(CheckpointError, match="b is in two weights files: part1.safetensors "
                                              "and part2.safetensors"):
        load_state_dict(tmp_path)


def test_a_duplicate_is_reported_as_such_under_an_index(tmp_path, small):
    save_sharded(small.state_dict(), tmp_path, max_shard_bytes=2048)
    first = tmp_path / "model-00001-of-00003.safetensors"
    save_file({**load_state_dict(first), "norm.bias": torch.zeros(8)}, first)
    with pytest.raises(CheckpointError, match="norm.bias is in two weights files"):
        load_state_dict(tmp_path)


def test_an_index_that_disagrees_with_its_shards_is_refused(tmp_path, small):
    save_sharded(small.state_dict(), tmp_path, max_shard_bytes=2048)
    index_path = tmp_path / "model.safetensors.index.json"
    good = json.loads(index_path.read_text())
    # a key the index maps that its shard does not hold
    index = json.loads(json.dumps(good))
    index["weight_map"]["ghost.weight"] = "model-00001-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="maps ghost.weight to .*which does not hold it"):
        load_state_dict(tmp_path)
    # a key a shard holds that the index does not map
    index = json.loads(json.dumps(good))
    del index["weight_map"]["norm.bias"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="holds norm.bias, which .*does not map"):
        load_state_dict(tmp_path)
    # a key mapped to the wrong shard
    index = json.loads(json.dumps(good))
    index["weight_map"]["norm.bias"] = "model-00001-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="maps norm.bias to model-00001"):
        load_state_dict(tmp_path)


def test_a_shard_named_in_the_index_must_exist(tmp_path, small):
    save_sharded(small.state_dict(), tmp_path, max_shard_bytes=2048)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00003.safetensors named in "
                                              "model.safetensors.index.json is missing"):
        describe(tmp_path)


def test_an_index_cannot_point_outside_its_folder(tmp_path):
    (tmp_path / "m").mkdir()
    save_file({"a": torch.zeros(1)}, tmp_path / "outside.safetensors")
    (tmp_path / "m" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        describe(tmp_path / "m")


def test_safetensors_win_over_torch_files(tmp_path, small):
    save_file(small.state_dict(), tmp_path / "model.safetensors")
    torch.save({"other": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / name).write_text("{}")
    layout = describe(tmp_path)
    assert layout.format == "safetensors" and layout.weight_files == [tmp_path /
                                                                      "model.safetensors"]
    assert [p.name for p in layout.tokenizer_files] == ["tokenizer.json", "vocab.txt"]
    assert same(load_state_dict(tmp_path), small.state_dict())


def test_pytorch_model_bin_folder_and_its_sharded_form(tmp_path, small):
    state = small.state_dict()
    single = tmp_path / "single"
    single.mkdir()
    torch.save(state, single / "pytorch_model.bin")
    torch.save({"not": "weights"}, single / "training_args.bin")  # left by a trainer
    assert describe(single).format == "torch"
    assert same(load_state_dict(single), state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = list(state)
    parts = {"pytorch_model-00001-of-00002.bin": keys[:3],
             "pytorch_model-00002-of-00002.bin": keys[3:]}
    for name, ks in parts.items():
        torch.save({k: state[k] for k in ks}, sharded / name)
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}))
    assert len(describe(sharded).weight_files) == 2
    assert same(load_state_dict(sharded), state)


def test_loose_torch_files_skip_trainer_leftovers(tmp_path, small):
    torch.save(small.state_dict(), tmp_path / "weights.pth")
    torch.save({"lr": 0.1}, tmp_path / "training_args.bin")
    torch.save({"rng": torch.zeros(1)}, tmp_path / "rng_state.pth")
    assert [p.name for p in describe(tmp_path).weight_files] == ["weights.pth"]


@pytest.mark.parametrize("name", ["w.pth", "w.bin", "w.pt"])
def test_single_torch_files(tmp_path, small, name):
    path = tmp_path / name
    torch.save(small.state_dict(), path)
    layout = describe(path)
    assert (layout.kind, layout.format, layout.weight_files) == ("file", "torch", [path])
    assert same(load_state_dict(path), small.state_dict())


def test_legacy_non_zip_torch_file(tmp_path, small):
    path = tmp_path / "old.pth"
    torch.save(small.state_dict(), path, _use_new_zipfile_serialization=False)
    assert same(load_state_dict(path), small.state_dict())


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_a_training_checkpoint_is_unwrapped(tmp_path, small, key):
    path = tmp_path / "train.pth"
    torch.save({key: small.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    notes: list[str] = []
    assert same(load_state_dict(path, notes=notes), small.state_dict())
    assert notes == [f"state dict taken from the checkpoint's {key!r} (train.pth)"]


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {"a": 1}, {}, {1: torch.zeros(1)},
                                 {"state_dict": {"a": "text"}}])
def test_what_is_not_a_state_dict_is_refused(tmp_path, obj):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="x.pth does not hold a state dict of tensors"):
        load_state_dict(path)


def test_a_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"a": torch.zeros(1), "obj": Small}, path)
    with pytest.raises(CheckpointError, match="evil.pth is not a weights-only torch file"):
        load_state_dict(path)


def test_unreadable_and_unknown_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="w.onnx is not a weights file"):
        describe(tmp_path / "w.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        describe(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no weights file in"):
        describe(empty)
    assert issubclass(CheckpointError, ContractError)


def test_read_config_refusals(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_config(tmp_path)


def test_tied_weights_are_saved_as_copies(tmp_path):
    w = torch.randn(4, 4)
    state = {"a.weight": w, "b.weight": w, "c": w[0]}
    save_sharded(state, tmp_path, max_shard_bytes=1 << 20)
    loaded = load_state_dict(tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

