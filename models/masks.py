"""Mask files beside a result: uint8 label images (PNG or NPZ) and label volumes (NPZ), written
atomically into the study's output folder so a region never names a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from models.base import ContractError, Region


def _labels(array: np.ndarray, ndim: int) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.ndim != ndim:
        raise ContractError(f"a {'mask' if ndim == 2 else 'mask volume'} needs {ndim} "
                            f"dimensions, not {a.ndim}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 255:
            raise ContractError(f"mask labels must be integers 0..255, not {a.dtype}")
        a = a.astype(np.uint8)
    return a


def write_mask(output_dir: Path, name: str, labels: np.ndarray, fmt: str = "png") -> Path:
    """Write a label image (2-D, PNG or NPZ) or volume (3-D, NPZ) as ``output_dir/name.fmt``."""
    if fmt not in ("png", "npz"):
        raise ContractError(f"mask format must be png or npz, not {fmt!r}")
    a = np.asarray(labels)
    ndim = 2 if fmt == "png" or a.ndim == 2 else 3
    a = _labels(a, ndim)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{name}.{fmt}"
    fd, tmp = tempfile.mkstemp(prefix=".mask-", suffix=f".{fmt}", dir=output_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            if fmt == "png":
                from PIL import Image

                Image.fromarray(a, mode="L").save(fh, format="PNG")
            else:
                np.savez_compressed(fh, labels=a)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def read_mask(path: str | Path) -> np.ndarray:
    """The uint8 labels of a mask file written by ``write_mask`` (or any 8-bit PNG)."""
    p = Path(path)
    if p.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(p) as img:
            if img.mode not in ("L", "1", "P"):
                raise ContractError(f"{p.name}: a mask PNG must be 8-bit grey, not {img.mode}")
            return np.asarray(img.convert("L"), dtype=np.uint8)
    if p.suffix.lower() == ".npz":
        with np.load(p) as data:
            if "labels" not in data:
                raise ContractError(f"{p.name}: a mask NPZ holds its labels as 'labels'")
            return _labels(data["labels"], data["labels"].ndim)
    raise ContractError(f"{p.name}: masks are PNG or NPZ files")


def check_mask(region: Region, root: Path | None = None) -> np.ndarray:
    """Read a mask region's file and check that it has the shape the region states."""
    if region.mask_path is None:
        raise ContractError(f"region {region.id!r} has no mask")
    path = Path(region.mask_path)
    if not path.is_absolute() and root is not None:
        path = root / path
    labels = read_mask(path)
    if tuple(labels.shape) != tuple(region.shape or ()):
        raise ContractError(f"region {region.id!r}: mask is {list(labels.shape)}, the region "
                            f"says {list(region.shape or ())}")
    return labels
