"""Device and dtype resolution. On a machine without CUDA every cuda request is refused; the CUDA
cases run where a GPU is present."""

from __future__ import annotations

import pytest
import torch

from models.base import ContractError
from models.runtime.device import dtype_name, resolve_device, resolve_dtype

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("name", [None, "", "  ", "cpu", "CPU"])
def test_cpu_is_the_default(name):
    assert resolve_device(name) == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "mps", "cuda0", "cpu:0"])
def test_unknown_forms_are_refused_with_the_allowed_ones(name):
    with pytest.raises(ContractError, match="cpu, cuda, cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_is_refused_without_a_device(name):
    with pytest.raises(ContractError, match=f"MEDGATE_DEVICE={name} but no CUDA device is "
                                            "available to this worker"):
        resolve_device(name)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_devices_are_checked_against_the_count():
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ContractError, match="sees"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("preferred", [None, "fp32", "float32", "bf16", "bfloat16", "fp16",
                                       "float16"])
def test_cpu_always_computes_in_float32(preferred):
    assert resolve_dtype("cpu", preferred) is torch.float32


def test_cuda_dtypes_follow_the_preference():
    # the choice on CUDA needs no device for fp16 and fp32
    assert resolve_dtype("cuda", "fp16") is torch.float16
    assert resolve_dtype("cuda:1", "float32") is torch.float32


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_defaults_to_bf16_where_supported():
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("cuda") is want and resolve_dtype("cuda", "bf16") is want


@pytest.mark.parametrize("bad", ["int8", "half", "fp64"])
def test_unknown_dtypes_are_refused(bad):
    with pytest.raises(ContractError, match="not one of fp32"):
        resolve_dtype("cpu", bad)


def test_an_unresolved_device_is_refused():
    with pytest.raises(ContractError, match="'tpu'"):
        resolve_dtype("tpu")


def test_dtype_names_round_trip():
    for dtype in (torch.float32, torch.float16):
        assert resolve_dtype("cuda", dtype_name(dtype)) is dtype
    assert [dtype_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == [
        "fp32", "bf16", "fp16"]
    assert dtype_name(torch.int64) == "int64"
