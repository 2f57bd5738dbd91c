"""The device and dtype a worker computes in (``MEDGATE_DEVICE``, a model's preferred dtype).

A request the worker cannot honour is refused rather than silently run on the CPU: a GPU
deployment that falls back to the CPU would be slow without anyone being told.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from models.base import ContractError

if TYPE_CHECKING:
    import torch

DEVICE_FORMS = ("cpu", "cuda", "cuda:N")
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
               "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def resolve_device(name: str | None) -> str:
    """"cpu" (also for None or ""), "cuda" or "cuda:N", checked against this worker."""
    if not name or not name.strip():
        return "cpu"
    dev = name.strip().lower()
    if dev == "cpu":
        return dev
    m = re.fullmatch(r"cuda(?::(\d+))?", dev)
    if m is None:
        raise ContractError(f"device {name!r} is not one of {', '.join(DEVICE_FORMS)}")
    import torch

    if not torch.cuda.is_available():
        raise ContractError(f"MEDGATE_DEVICE={dev} but no CUDA device is available to this "
                            "worker")
    if m.group(1) is not None:
        count = torch.cuda.device_count()
        if int(m.group(1)) >= count:
            raise ContractError(f"MEDGATE_DEVICE={dev} but this worker sees {count} CUDA "
                                f"device(s): cuda:0 to cuda:{count - 1}")
    return dev


def _dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def resolve_dtype(device: str, preferred: str | None = None) -> torch.dtype:
    """The dtype to compute in on ``device`` (a resolved device), given a model's preference.

    On the CPU always float32, whatever is preferred: bf16 and fp16 matmuls are slow there,
    and the CPU path is where the models were validated, in float32. On CUDA bf16 is the
    default (fp16 where the GPU has no bf16); fp16 and fp32 are honoured as asked.
    """
    if preferred is not None and preferred.strip().lower() not in DTYPE_NAMES:
        raise ContractError(f"dtype {preferred!r} is not one of {', '.join(DTYPE_NAMES)}")
    want = DTYPE_NAMES[preferred.strip().lower()] if preferred else "bfloat16"
    dev = device.strip().lower()
    if dev == "cpu":
        return _dtype("float32")
    if re.fullmatch(r"cuda(?::\d+)?", dev) is None:
        raise ContractError(f"device {device!r} is not one of {', '.join(DEVICE_FORMS)}")
    if want == "bfloat16":
        import torch

        return _dtype("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    return _dtype(want)


def dtype_name(dtype: torch.dtype) -> str:
    """"fp32", "bf16" or "fp16" (names ``resolve_dtype`` accepts back); other dtypes by their
    torch name."""
    name = str(dtype).removeprefix("torch.")
    return _SHORT.get(name, name)
