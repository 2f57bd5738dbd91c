"""Checkpoints as model hubs lay them out, read into a state dict without running any code.

A checkpoint is one weights file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``) or a folder:
``model.safetensors``, sharded ``model-0000i-of-0000n.safetensors`` with
``model.safetensors.index.json``, the older ``pytorch_model.bin`` (sharded or not), or failing
those the folder's loose weights files. Safetensors are read memory-mapped; torch files with
``weights_only=True``, so a pickle can carry no code.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from models.base import ContractError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"
TORCH_SUFFIXES = (".bin", ".pth", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json")
# Files a training run leaves next to its weights; they are pickles of other things and never
# part of the model, so the loose-file fallback must not pick them up.
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
# Keys under which training scripts store the model's state dict next to optimizer state.
_WRAPPERS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ContractError):
    """A checkpoint whose layout or contents cannot be loaded as a state dict."""


@dataclass
class CheckpointLayout:
    root: Path  # the file itself, or the folder
    kind: Literal["file", "folder"]
    weight_files: list[Path]
    format: Literal["safetensors", "torch"]
    index: Path | None = None
    config: Path | None = None
    tokenizer_files: list[Path] = field(default_factory=list)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the {what} {path}: {exc}") from exc


def _weight_map(index: Path) -> dict[str, str]:
    data = _read_json(index, "checkpoint index")
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if (not isinstance(wmap, dict) or not wmap
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items())):
        raise CheckpointError(f"{index} has no 'weight_map' of tensor names to shard files")
    return wmap


def _shards(root: Path, index: Path) -> list[Path]:
    """The shard files an index names, each required to exist inside the folder."""
    out: list[Path] = []
    for name in sorted(set(_weight_map(index).values())):
        shard = root / name
        inside = shard.resolve().is_relative_to(root.resolve())
        if not inside or not shard.is_file():
            what = "is missing" if inside else "lies outside the checkpoint folder"
            raise CheckpointError(f"shard {name} named in {index.name} {what} ({root})")
        out.append(shard)
    return out


def _loose(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.iterdir()
                  if p.is_file() and p.suffix in suffixes and not p.name.startswith(".")
                  and p.name not in _NOT_WEIGHTS and not p.name.startswith("rng_state"))


def describe(path: str | Path) -> CheckpointLayout:
    """Which files of a checkpoint hold its weights, and where its config and tokenizer are."""
    root = Path(path)
    if root.is_file():
        if root.suffix == ".safetensors":
            return CheckpointLayout(root, "file", [root], "safetensors")
        if root.suffix in TORCH_SUFFIXES:
            return CheckpointLayout(root, "file", [root], "torch")
        raise CheckpointError(f"{root.name} is not a weights file (.safetensors, "
                              f"{', '.join(TORCH_SUFFIXES)})")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} does not exist")
    index: Path | None = None
    fmt: Literal["safetensors", "torch"] = "safetensors"
    if (root / SAFETENSORS_INDEX).is_file():
        index = root / SAFETENSORS_INDEX
        files = _shards(root, index)
    elif (root / SAFETENSORS_SINGLE).is_file():
        files = [root / SAFETENSORS_SINGLE]
    elif (root / TORCH_INDEX).is_file():
        index, fmt = root / TORCH_INDEX, "torch"
        files = _shards(root, index)
    elif (root / TORCH_SINGLE).is_file():
        files, fmt = [root / TORCH_SINGLE], "torch"
    elif files := _loose(root, (".safetensors",)):
        pass
    elif files := _loose(root, (".bin", ".pth")):
        fmt = "torch"
    else:
        raise CheckpointError(f"no weights file in {root} (looked for {SAFETENSORS_INDEX}, "
                              f"{SAFETENSORS_SINGLE}, {TORCH_INDEX}, {TORCH_SINGLE}, "
                              "*.safetensors, *.bin, *.pth)")
    config = root / "config.json"
    return CheckpointLayout(
        root, "folder", files, fmt, index, config if config.is_file() else None,
        [root / n for n in TOKENIZER_FILES if (root / n).is_file()])


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder."""
    root = Path(path)
    config = root / "config.json"
    if not config.is_file():
        what = "a single weights file has" if root.is_file() else f"{root} has"
        raise CheckpointError(f"no config.json: {what} none")
    data = _read_json(config, "checkpoint config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{config} holds {type(data).__name__}, not a JSON object")
    return data


def _is_state(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _read_torch(file: Path, device: str, notes: list[str] | None) -> dict[str, torch.Tensor]:
    # mmap maps the tensors instead of reading them; the legacy (pre-1.6, non-zip) format
    # cannot be mapped and is read whole.
    mmap = zipfile.is_zipfile(file)
    try:
        obj = torch.load(file, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{file} is not a weights-only torch file: it is not one at all or it pickles "
            "objects other than tensors and containers, which are refused because loading "
            "them would run code") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from exc
    if not _is_state(obj) and isinstance(obj, Mapping):
        for key in _WRAPPERS:
            if _is_state(obj.get(key)):
                obj = obj[key]
                if notes is not None:
                    notes.append(f"state dict taken from the checkpoint's {key!r} ({file.name})")
                break
    if not _is_state(obj):
        raise CheckpointError(f"{file} does not hold a state dict of tensors (a mapping of "
                              "names to tensors, or a training checkpoint holding one under "
                              f"{', '.join(repr(k) for k in _WRAPPERS)})")
    return dict(obj)


def _read_safetensors(file: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file, device=device)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from exc


def load_state_dict(path: str | Path, device: str = "cpu", *,
                    notes: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file or folder, every shard read once.

    Refused: a tensor name held by two files, and an index whose weight map disagrees with what
    the shards hold (a shard replaced by one of another export). ``notes``, when given,
    receives a line for each normalisation made (a training checkpoint unwrapped).
    """
    layout = describe(path)
    owner: dict[str, Path] = {}
    state: dict[str, torch.Tensor] = {}
    for file in layout.weight_files:
        part = (_read_safetensors(file, device) if layout.format == "safetensors"
                else _read_torch(file, device, notes))
        for key, tensor in part.items():
            if key in owner:
                raise CheckpointError(f"tensor {key} is in two weights files: "
                                      f"{owner[key].name} and {file.name}")
            owner[key] = file
            state[key] = tensor
    if layout.index is not None:
        wmap = _weight_map(layout.index)
        for key, shard in wmap.items():
            if key not in owner:
                raise CheckpointError(f"{layout.index.name} maps {key} to {shard}, which does "
                                      "not hold it")
            if owner[key] != layout.root / shard:
                raise CheckpointError(f"{layout.index.name} maps {key} to {shard}, but it is in "
                                      f"{owner[key].name}")
        unmapped = [k for k in owner if k not in wmap]
        if unmapped:
            more = f" and {len(unmapped) - 1} more" if len(unmapped) > 1 else ""
            raise CheckpointError(f"{owner[unmapped[0]].name} holds {unmapped[0]}{more}, which "
                                  f"{layout.index.name} does not map")
    return state


def save_sharded(state: Mapping[str, torch.Tensor], folder: str | Path, max_shard_bytes: int,
                 config: dict[str, Any] | None = None) -> list[Path]:
    """Write ``state`` as hub-style safetensors shards with their index (and ``config.json``).

    Tensors go to shards in key order, a new shard starting when the next tensor would push the
    current one past ``max_shard_bytes`` (a larger tensor gets a shard of its own). The index
    is written even for one shard, so the layout does not depend on the model's size.
    """
    from safetensors.torch import save_file

    if max_shard_bytes <= 0:
        raise CheckpointError("max_shard_bytes must be positive")
    if not state:
        raise CheckpointError("refusing to save an empty state dict")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    storages: set[int] = set()
    for key, tensor in state.items():
        t = tensor.detach().contiguous()
        # safetensors refuses tensors sharing memory (tied or sliced weights): give each its
        # own copy
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = t
        size += nbytes
        total += nbytes
    n = len(groups)
    paths: list[Path] = []
    wmap: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(group, folder / name, metadata={"format": "pt"})
        paths.append(folder / name)
        wmap.update(dict.fromkeys(group, name))
    index = {"metadata": {"total_size": total}, "weight_map": wmap}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n",
                                            encoding="utf-8")
    return paths
