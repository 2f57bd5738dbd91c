"""Checkpoint manifests: computed for a file and a folder, stable, and any change on disk (a byte,
a size, a file removed or added) refused with the file's name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.base import ContractError, sha256_file
from models.runtime.checkpoint import save_sharded
from models.runtime.manifest import (
    Manifest,
    ManifestError,
    ManifestFile,
    compute_manifest,
    stat_fingerprint,
    verify_manifest,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A three-shard safetensors checkpoint with its index and config."""
    state = {f"layer{i}.weight": torch.full((64, 64), float(i)) for i in range(6)}
    root = tmp_path / "ckpt"
    shards = save_sharded(state, root, max_shard_bytes=2 * 64 * 64 * 4, config={"width": 64})
    assert [p.name for p in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    return root


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_file_manifest_digest_is_the_file_sha256(tmp_path):
    f = tmp_path / "w.pth"
    torch.save({"x": torch.arange(10)}, f)
    m = compute_manifest(f)
    assert m.kind == "file" and [x.path for x in m.files] == ["w.pth"]
    assert m.digest == sha256_file(f) == m.files[0].sha256
    assert m.total_size == f.stat().st_size
    verify_manifest(f, m)


def test_folder_manifest_is_sorted_stable_and_round_trips(folder):
    seen: list[tuple[str, int, int]] = []
    m = compute_manifest(folder, progress=lambda *a: seen.append(a))
    assert m.kind == "folder"
    assert [f.path for f in m.files] == sorted(f.path for f in m.files)
    assert {"config.json", "model.safetensors.index.json"} <= {f.path for f in m.files}
    assert compute_manifest(folder).digest == m.digest
    assert seen[-1][1] == seen[-1][2] == m.total_size
    again = Manifest.from_dict(m.to_dict())
    assert again == m and again.digest == m.digest
    verify_manifest(folder, m)


def test_folder_digest_is_over_path_size_and_sha_lines(folder):
    import hashlib

    m = compute_manifest(folder)
    lines = "".join(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in sorted(m.files,
                                                                       key=lambda f: f.path))
    assert m.digest == hashlib.sha256(lines.encode()).hexdigest()


def test_hidden_files_and_folders_are_not_part_of_the_checkpoint(folder):
    m = compute_manifest(folder)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")
    (folder / ".DS_Store").write_text("x")
    assert compute_manifest(folder) == m
    verify_manifest(folder, m)


def test_nested_files_have_posix_relative_paths(folder):
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
    assert "tokenizer/vocab.txt" in [f.path for f in compute_manifest(folder).files]


def test_one_flipped_byte_names_the_shard(folder):
    m = compute_manifest(folder)
    flip_byte(folder / "model-00002-of-00003.safetensors")
    with pytest.raises(ManifestError, match=r"weights file model-00002-of-00003\.safetensors "
                                            r"changed since registration: sha256 .*refusing"):
        verify_manifest(folder, m)


def test_a_changed_size_is_refused_before_hashing(folder):
    m = compute_manifest(folder)
    with open(folder / "model-00003-of-00003.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match="model-00003-of-00003.safetensors changed since "
                                            "registration: .* bytes"):
        verify_manifest(folder, m)


def test_a_missing_shard_is_named_with_its_registered_size(folder):
    m = compute_manifest(folder)
    size = (folder / "model-00001-of-00003.safetensors").stat().st_size
    (folder / "model-00001-of-00003.safetensors").unlink()
    with pytest.raises(ManifestError, match=f"weights file model-00001-of-00003.safetensors is "
                                            f"missing from .*ckpt \\(registered with {size} "
                                            "bytes\\)"):
        verify_manifest(folder, m)


def test_an_extra_file_is_refused(folder):
    m = compute_manifest(folder)
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(ManifestError, match="weights file extra.bin is not in the registered "
                                            "manifest"):
        verify_manifest(folder, m)


def test_a_missing_single_file_and_a_kind_change(tmp_path, folder):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"0123")
    m = compute_manifest(f)
    f.unlink()
    with pytest.raises(ManifestError, match="w.safetensors is missing"):
        verify_manifest(f, m)
    with pytest.raises(ManifestError, match="folder"):
        verify_manifest(folder, m)


def test_empty_or_missing_paths_are_refused(tmp_path):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(ManifestError, match="holds no files"):
        compute_manifest(tmp_path / "empty")
    with pytest.raises(ManifestError, match="does not exist"):
        compute_manifest(tmp_path / "nowhere")
    assert issubclass(ManifestError, ContractError)


@pytest.mark.parametrize("bad", [
    [],
    "files",
    {"kind": "folder", "files": []},
    {"kind": "blob", "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]},
    {"kind": "folder", "files": [{"path": "../a", "size": 1, "sha256": "0" * 64}]},
    {"kind": "folder", "files": [{"path": "/a", "size": 1, "sha256": "0" * 64}]},
    {"kind": "folder", "files": [{"path": "a", "size": -1, "sha256": "0" * 64}]},
    {"kind": "folder", "files": [{"path": "a", "size": 1, "sha256": "XYZ"}]},
    {"kind": "folder", "files": [{"path": "a", "size": True, "sha256": "0" * 64}]},
    {"kind": "folder", "files": [{"path": "a", "size": 1}]},
    {"kind": "file", "files": [{"path": "d/a", "size": 1, "sha256": "0" * 64}]},
    {"kind": "folder", "files": [{"path": "a", "size": 1, "sha256": "0" * 64}] * 2},
    {"kind": "folder", "digest": "1" * 64,
     "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]},
])
def test_malformed_manifests_are_refused(bad):
    with pytest.raises(ManifestError):
        Manifest.from_dict(bad)


def test_a_bad_entry_is_named():
    with pytest.raises(ManifestError, match="model.bin"):
        ManifestFile("model.bin", 3, "nothex")


def test_stat_fingerprint_sees_a_replaced_file(folder):
    m = compute_manifest(folder)
    before = stat_fingerprint(folder, m)
    assert stat_fingerprint(folder, m) == before
    shard = folder / "model-00002-of-00003.safetensors"
    replacement = folder / "new.tmp"
    replacement.write_bytes(shard.read_bytes())
    os.replace(replacement, shard)  # same bytes, a new inode
    assert stat_fingerprint(folder, m) != before
    shard.unlink()
    gone = stat_fingerprint(folder, m)
    assert ("model-00002-of-00003.safetensors", None) in gone


def test_stat_fingerprint_sees_an_added_file(folder):
    m = compute_manifest(folder)
    before = stat_fingerprint(folder, m)
    (folder / "extra.safetensors").write_bytes(b"x")
    assert stat_fingerprint(folder, m) != before


def test_stat_fingerprint_of_a_file(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    m = compute_manifest(f)
    st = f.stat()
    assert stat_fingerprint(f, m)[0] == ("w.pth", 3, st.st_mtime_ns, st.st_ino)


def test_an_uppercase_sha256_is_kept_lowercase():
    assert ManifestFile("w.pth", 1, "AB" * 32).sha256 == "ab" * 32
