"""PCA (no whitening) + per-component standardisation: the model's input transform.

Fitted once on a cube's valid pixels and saved with the model, so any cube used with the model
later goes through the same projection and scaling.

The PCA is the eigendecomposition of the band covariance of a seeded random subsample of at
most ``max_pixels`` valid pixels, accumulated in float64 one row chunk at a time (numpy
``eigh`` rather than scikit-learn): memory is bounded by the B x B covariance and one chunk
whatever the scene size, the result is exact and deterministic (scikit-learn switches to a
randomized solver by problem size), and the sign of each component is fixed (largest loading
positive) so two fits of the same data give the same arrays. Torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

CHUNK_BYTES = 64 << 20


def as_cube(obj: Any, name: str = "array"):
    """A ``Cube`` from a ``Cube``-like object or a plain (H, W, B) array."""
    if hasattr(obj, "data") and hasattr(obj, "valid_mask"):
        return obj
    from .io import Cube

    arr = np.asarray(obj) if not hasattr(obj, "shape") else obj
    return Cube(data=arr, name=name)


def _row_step(shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = max(1, int(np.prod(shape[1:])) * max(itemsize, 8))
    return max(1, CHUNK_BYTES // row_bytes)


class Preprocessor:
    """PCA to ``n_components`` (no whitening), then zero mean / unit variance per component."""

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        scale_mean: np.ndarray,
        scale_std: np.ndarray,
        explained_variance: np.ndarray | None = None,
    ):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.scale_mean = np.asarray(scale_mean, dtype=np.float64)
        self.scale_std = np.asarray(scale_std, dtype=np.float64)
        c, b = self.components.shape
        if (
            self.mean.shape != (b,)
            or self.scale_mean.shape != (c,)
            or self.scale_std.shape != (c,)
        ):
            raise ValueError(
                f"inconsistent preprocessing arrays: components {self.components.shape}, "
                f"mean {self.mean.shape}, scale_mean {self.scale_mean.shape}, "
                f"scale_std {self.scale_std.shape}"
            )
        self.explained_variance = (
            np.zeros(c)
            if explained_variance is None
            else np.asarray(explained_variance, np.float64)
        )

    @property
    def n_bands(self) -> int:
        return int(self.components.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(
        cls, cube: Any, n_components: int, max_pixels: int = 200_000, seed: int = 0
    ) -> Preprocessor:
        """Fit on at most ``max_pixels`` valid pixels of ``cube`` drawn with ``seed``."""
        cube = as_cube(cube)
        h, w, b = (int(s) for s in cube.data.shape)
        if not 1 <= n_components <= b:
            raise InputError(
                f"{cube.name}: cannot keep {n_components} PCA components of a cube with {b} bands "
                f"(expected 1..{b})"
            )
        valid = np.asarray(cube.valid_mask(), dtype=bool).ravel()
        flat = np.flatnonzero(valid)
        if flat.size < 2:
            raise InputError(f"{cube.name}: fewer than 2 valid pixels to fit the PCA on")
        rng = np.random.default_rng(seed)
        if flat.size > max_pixels:
            flat = np.sort(rng.choice(flat, size=max_pixels, replace=False))
        n = flat.size

        # Two passes over the selected pixels (mean, then covariance), one row chunk at a time.
        step = _row_step((h, w, b), cube.data.dtype.itemsize)
        total = np.zeros(b)
        scatter = np.zeros((b, b))
        rows = flat // w
        chunks = []
        for r0 in range(0, h, step):
            lo, hi = np.searchsorted(rows, [r0, r0 + step])
            if hi > lo:
                chunks.append((r0, lo, hi))
        for r0, lo, hi in chunks:
            block = np.asarray(cube.data[r0 : r0 + step]).reshape(-1, b)
            px = block[flat[lo:hi] - r0 * w].astype(np.float64)
            total += px.sum(axis=0)
        mean = total / n
        for r0, lo, hi in chunks:
            block = np.asarray(cube.data[r0 : r0 + step]).reshape(-1, b)
            px = block[flat[lo:hi] - r0 * w].astype(np.float64) - mean
            scatter += px.T @ px
        cov = scatter / max(n - 1, 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:n_components]
        comps = evecs[:, order].T  # (C, B)
        signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
        comps *= np.where(signs == 0, 1.0, signs)[:, None]
        variance = np.maximum(evals[order], 0.0)
        # PCA scores of centred data have zero mean; their variance is the eigenvalue.
        std = np.sqrt(variance)
        std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
        return cls(mean, comps, np.zeros(n_components), std, explained_variance=variance)

    def check_bands(self, n_bands: int, name: str = "cube") -> None:
        if int(n_bands) != self.n_bands:
            raise InputError(
                f"{name} has {n_bands} bands but the model was fitted on cubes with "
                f"{self.n_bands} bands"
            )

    def transform(self, data: Any, name: str = "cube") -> np.ndarray:
        """(H, W, B) -> (H, W, C) float32, one row chunk at a time (memmaps stay on disk).

        Non-finite input pixels give non-finite outputs; callers mask invalid pixels.
        """
        if getattr(data, "ndim", None) != 3:
            raise InputError(
                f"{name}: expected an (H, W, B) cube, got shape {getattr(data, 'shape', None)}"
            )
        h, w, b = (int(s) for s in data.shape)
        self.check_bands(b, name)
        proj = (self.components / self.scale_std[:, None]).T  # (B, C)
        offset = (self.mean @ self.components.T + self.scale_mean) / self.scale_std
        out = np.empty((h, w, self.n_components), dtype=np.float32)
        step = _row_step((h, w, b), np.dtype(getattr(data, "dtype", np.float64)).itemsize)
        for r0 in range(0, h, step):
            block = np.asarray(data[r0 : r0 + step], dtype=np.float64)
            out[r0 : r0 + step] = block @ proj - offset
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean.copy(),
            "components": self.components.copy(),
            "scale_mean": self.scale_mean.copy(),
            "scale_std": self.scale_std.copy(),
            "explained_variance": self.explained_variance.copy(),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> Preprocessor:
        missing = {"mean", "components", "scale_mean", "scale_std"} - set(d)
        if missing:
            raise ValueError(f"preprocessing arrays missing: {sorted(missing)}")
        return cls(
            d["mean"],
            d["components"],
            d["scale_mean"],
            d["scale_std"],
            d.get("explained_variance"),
        )
