"""Device resolution and bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from napari_mtmsd.device import autocast, available_devices, bf16_supported, resolve_device
from napari_mtmsd.errors import DeviceError


def test_auto_prefers_the_best_available():
    assert resolve_device("auto").type == available_devices()[0]
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_names_what_is_available():
    with pytest.raises(DeviceError, match=r"'cuda' is not available.*available here: .*cpu"):
        resolve_device("cuda")


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_autocast_is_bf16_only_where_supported():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("cpu"):
        y = lin(x)
    assert y.dtype == (torch.bfloat16 if bf16_supported("cpu") else torch.float32)
    with autocast("cpu", enabled=False):
        assert lin(x).dtype == torch.float32
    assert not bf16_supported("mps")
