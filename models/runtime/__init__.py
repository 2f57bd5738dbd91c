"""What every model family shares to get its weights onto a device safely.

- ``manifest``: the per-file sha256 manifest of a registered checkpoint (file or folder) and its
  verification before an engine is built;
- ``checkpoint``: checkpoint layouts as model hubs publish them (one file, a folder, sharded
  safetensors with an index) and loading their state dict without executing code;
- ``strict``: strict state-dict loading with a message that says what differs;
- ``tree``: a family's declared module tree, built on the meta device for ``models inspect``;
- ``device``: the device and dtype a worker computes in.

The submodules are imported one by one (nothing is re-exported here) so that ``manifest`` and
``tree`` stay usable without importing torch.
"""
