"""Modules rebuilt from saved weights, without initialising them first.

Loading a model is reading a file: a module built on the ``meta`` device has shapes but no memory
and no random initialisation for the file to overwrite, and ``assign`` makes the loaded tensors its
parameters. Besides being faster for large presets, this keeps loading free of torch kernels; run
on napari's main thread, those would give that thread an OpenMP team of its own and slow every
later job of the compute thread (see ``_qt/_workers.compute_pool``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def empty(factory: Callable[[], M]) -> M:
    """``factory()`` on the meta device: the architecture, with no weights yet."""
    with torch.device("meta"):
        return factory()


def assign(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Make ``state`` the module's weights (strict: names and shapes must match; float32)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
