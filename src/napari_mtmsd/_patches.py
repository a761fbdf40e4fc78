"""Where pretraining's patches come from, with memory bounded by a budget, not by the scene.

A patch is the model input around a pixel, padded by reflection at the scene's edges and
flipped / rotated (``dihedral_indices``). Two ways to cut it, chosen by size:

- ``whole``: the scene's padded model input (C x (H + p) x (W + p) float32) is made once and
  kept on the device, when three times its size (the transform's, the padding's and the
  transposed copies held at once while it is made) fits ``PATCH_BUDGET_BYTES``. Indian Pines
  (3 MB with the ``cpu`` preset) and any scene up to about 1.8 Mpx at C = 25 take this path.
- ``windows``: otherwise every patch is read from the (lazy, possibly memory-mapped) cube as the
  small window it covers, preprocessed per batch and masked where pixels are invalid: memory is
  a batch of windows, and the scene's (H, W) validity mask (a byte per pixel).

Both give the same patches for the same draws (to float rounding of the projection), so the
path taken does not change what a seed means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .preprocess import Preprocessor

#: Most bytes the ``whole`` path may hold while it builds the padded model input.
PATCH_BUDGET_BYTES = 512 << 20


class PatchSampler:
    """Patches of ``p`` x ``p`` of a cube's model input (invalid pixels 0), on ``dev``."""

    def __init__(
        self,
        cube: Any,
        pre: Preprocessor,
        p: int,
        dev: torch.device,
        budget: int | None = None,
    ) -> None:
        self.cube, self.pre, self.p, self.dev = cube, pre, int(p), dev
        self.H, self.W = (int(s) for s in cube.shape[:2])
        self.C = pre.n_components
        pre.check_bands(cube.n_bands, cube.name)
        padded = 4 * self.C * (self.H + self.p) * (self.W + self.p)
        self.mode = (
            "whole"
            if 3 * padded <= (PATCH_BUDGET_BYTES if budget is None else budget)
            else "windows"
        )
        self.valid = np.asarray(cube.valid_mask(pre.good_bands), dtype=bool)
        self.data = self._whole() if self.mode == "whole" else None

    def _whole(self) -> torch.Tensor:
        x = self.pre.transform(self.cube.data, name=self.cube.name)
        x[~self.valid] = 0.0
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        half = self.p // 2
        pad = ((half, self.p - half), (half, self.p - half), (0, 0))
        x = np.pad(x, pad, mode="reflect")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(self.dev)

    def patches(self, rows: np.ndarray, cols: np.ndarray, aug: np.ndarray) -> torch.Tensor:
        """(n, C, p, p) channels-last patches centred on pixels (``rows``, ``cols``) under the
        flips / rotations ``aug`` (0..7)."""
        ri, ci = dihedral_indices(rows, cols, aug, self.p)  # in padded coordinates
        if self.data is not None:
            dev = self.dev
            x0 = self.data[:, torch.from_numpy(ri).to(dev), torch.from_numpy(ci).to(dev)]
            x0 = x0.permute(1, 0, 2, 3)
        else:
            x0 = torch.from_numpy(self._windows(ri, ci)).permute(0, 3, 1, 2).to(self.dev)
        return x0.contiguous(memory_format=torch.channels_last)

    def _windows(self, ri: np.ndarray, ci: np.ndarray) -> np.ndarray:
        """(n, p, p, C) model input at padded indices, each read as the window it covers."""
        half = self.p // 2
        ri, ci = reflect(ri - half, self.H), reflect(ci - half, self.W)
        raw = np.empty((len(ri), self.p, self.p, self.cube.n_bands), self.cube.data.dtype)
        for k, (r, c) in enumerate(zip(ri, ci, strict=True)):
            r0, c0 = int(r.min()), int(c.min())
            block = np.asarray(self.cube.data[r0 : int(r.max()) + 1, c0 : int(c.max()) + 1])
            raw[k] = block[r - r0, c - c0]
        n, p = len(ri), self.p
        x = self.pre.transform(raw.reshape(n * p, p, -1), name=self.cube.name)
        x = x.reshape(n, p, p, self.C)
        x[~self.valid[ri, ci]] = 0.0
        return np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices into an axis of ``n`` for positions that may lie outside it, mirrored at its ends
    without repeating the edge (``np.pad``'s ``reflect``, repeated for any distance)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def dihedral_indices(
    rows: np.ndarray, cols: np.ndarray, aug: np.ndarray, p: int
) -> tuple[np.ndarray, np.ndarray]:
    """(B, p, p) row and column indices of patches at top-left (rows, cols), each under one of
    the 8 flips/rotations (bit 0: transpose, bit 1: flip rows, bit 2: flip columns)."""
    ar = np.arange(p)
    i = np.broadcast_to(ar[None, :, None], (len(rows), p, p))
    j = np.broadcast_to(ar[None, None, :], (len(rows), p, p))
    transpose = (aug & 1).astype(bool)[:, None, None]
    a, b = np.where(transpose, j, i), np.where(transpose, i, j)
    a = np.where((aug & 2).astype(bool)[:, None, None], p - 1 - a, a)
    b = np.where((aug & 4).astype(bool)[:, None, None], p - 1 - b, b)
    return rows[:, None, None] + a, cols[:, None, None] + b
