"""PCA (no whitening) + per-component standardisation: the model's input transform.

Fitted once on a cube's valid pixels and saved with the model, so any cube used with the model
later goes through the same projection and scaling.

The PCA is the eigendecomposition of the band covariance of a seeded random subsample of at
most ``max_pixels`` valid pixels, accumulated in float64 one row chunk at a time (numpy
``eigh`` rather than scikit-learn): memory is bounded by the B x B covariance, one chunk, the
sample's indices and the scene's (H, W) validity mask (a byte per pixel) whatever the scene size, the result is exact and deterministic (scikit-learn switches to a
randomized solver by problem size), and the sign of each component is fixed (largest loading
positive) so two fits of the same data give the same arrays. Torch-free.

Bad bands (declared by the product, or holding no valid value anywhere) are left out: their
loadings and mean are 0, ``good_bands`` records them with the model, and ``transform`` never
reads them, so their NaN or no-data values cannot reach the model.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def _sampled_rows(
    valid: np.ndarray, ranks: np.ndarray | None, step: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, flat indices within the chunk) of the sampled pixels, row chunk by row
    chunk: the ``ranks``-th valid pixels in raster order (all valid pixels when None). Memory
    is bounded by a chunk and the sample, never a list of every valid pixel of the scene."""
    before = 0  # valid pixels in the chunks before
    for r0 in range(0, valid.shape[0], step):
        local = np.flatnonzero(valid[r0 : r0 + step])
        if ranks is not None:
            lo, hi = np.searchsorted(ranks, [before, before + len(local)])
            before, local = before + len(local), local[ranks[lo:hi] - before]
        if len(local):
            yield r0, local


class Preprocessor:
    """PCA to ``n_components`` (no whitening), then zero mean / unit variance per component."""

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        scale_mean: np.ndarray,
        scale_std: np.ndarray,
        explained_variance: np.ndarray | None = None,
        good_bands: np.ndarray | None = None,
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
        self.good_bands = (
            np.ones(b, bool) if good_bands is None else np.asarray(good_bands, bool).ravel()
        )
        if self.good_bands.shape != (b,):
            raise ValueError(f"good_bands has {self.good_bands.size} flags for {b} bands")

    @property
    def bad_bands(self) -> list[int]:
        """0-based indices of the bands the model does not use."""
        return [int(i) for i in np.flatnonzero(~self.good_bands)]

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
        valid = np.asarray(cube.valid_mask(), dtype=bool)
        n_valid = int(valid.sum())
        if n_valid < 2:
            raise InputError(f"{cube.name}: fewer than 2 valid pixels to fit the PCA on")
        good = np.asarray(cube.good_bands(), dtype=bool)
        if n_components > int(good.sum()):
            raise InputError(
                f"{cube.name}: cannot keep {n_components} PCA components of {int(good.sum())} "
                f"usable bands ({b - int(good.sum())} of {b} are bad or hold no data)"
            )
        ranks = None  # every valid pixel
        if n_valid > max_pixels:  # the same draw as choosing from the list of valid pixels
            ranks = np.sort(np.random.default_rng(seed).choice(n_valid, max_pixels, replace=False))
        n = n_valid if ranks is None else len(ranks)

        # Two passes over the selected pixels (mean, then covariance), one row chunk at a time.
        step = _row_step((h, w, b), cube.data.dtype.itemsize)
        g = int(good.sum())
        total = np.zeros(g)
        scatter = np.zeros((g, g))
        for r0, local in _sampled_rows(valid, ranks, step):
            block = np.asarray(cube.data[r0 : r0 + step]).reshape(-1, b)
            total += block[local][:, good].astype(np.float64).sum(axis=0)
        mean = total / n
        for r0, local in _sampled_rows(valid, ranks, step):
            block = np.asarray(cube.data[r0 : r0 + step]).reshape(-1, b)
            px = block[local][:, good].astype(np.float64) - mean
            scatter += px.T @ px
        cov = scatter / max(n - 1, 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:n_components]
        sub = evecs[:, order].T  # (C, good bands)
        signs = np.sign(sub[np.arange(n_components), np.abs(sub).argmax(axis=1)])
        sub *= np.where(signs == 0, 1.0, signs)[:, None]
        comps = np.zeros((n_components, b))
        comps[:, good] = sub
        full_mean = np.zeros(b)
        full_mean[good] = mean
        variance = np.maximum(evals[order], 0.0)
        # PCA scores of centred data have zero mean; their variance is the eigenvalue.
        std = np.sqrt(variance)
        std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
        return cls(full_mean, comps, np.zeros(n_components), std, variance, good_bands=good)

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
        good = self.good_bands
        every = bool(good.all())
        proj = (self.components[:, good] / self.scale_std[:, None]).T  # (good B, C)
        offset = (self.mean[good] @ self.components[:, good].T + self.scale_mean) / self.scale_std
        out = np.empty((h, w, self.n_components), dtype=np.float32)
        step = _row_step((h, w, b), np.dtype(getattr(data, "dtype", np.float64)).itemsize)
        for r0 in range(0, h, step):
            block = np.asarray(data[r0 : r0 + step], dtype=np.float64)
            out[r0 : r0 + step] = (block if every else block[:, :, good]) @ proj - offset
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays saved with a model; ``good_bands`` only when some band is bad, so models
        without bad bands keep their files and fingerprints."""
        out = {
            "mean": self.mean.copy(),
            "components": self.components.copy(),
            "scale_mean": self.scale_mean.copy(),
            "scale_std": self.scale_std.copy(),
            "explained_variance": self.explained_variance.copy(),
        }
        if not self.good_bands.all():
            out["good_bands"] = self.good_bands.astype(np.uint8)
        return out

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
            d.get("good_bands"),
        )
