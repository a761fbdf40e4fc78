"""A compact embedding of the scene's diffusion features, learnt from all of its pixels.

The stored features of a pixel are ``2 x T x D`` numbers (12,160 with the ``cpu`` preset). A
classifier fitted on 5-20 labelled pixels per class cannot estimate that many weights, and
purification ranks channels from class means of as few pixels. A principal-component projection
fitted on the unlabelled pixels of the scene itself (like the diffusion model, it sees no labels)
keeps the directions along which the scene's pixels differ, in 32 numbers per pixel, whitened; a small
kernel classifier on those is what few labels can fit (docs/benchmarks.md, "Few labels").

Fitting reads a seeded sample of pixels (memory bounded by ``budget_mb``); applying the
projection reads the store once in raster chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import numpy as np

from ._progress import Progress, run
from .errors import InputError

#: Pixels read per chunk when projecting a whole store.
_CHUNK = 4096


def _flat(centre: np.ndarray, glob: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, T, D) centre and global features -> (N, 2 T D) float32 rows, converted straight into
    ``out`` (a fresh array when None): no intermediate copies of a few hundred MB."""
    n = len(centre)
    centre, glob = np.asarray(centre).reshape(n, -1), np.asarray(glob).reshape(n, -1)
    if out is None:
        out = np.empty((n, centre.shape[1] + glob.shape[1]), np.float32)
    out[:, : centre.shape[1]], out[:, centre.shape[1] :] = centre, glob
    return out


@dataclasses.dataclass
class FeatureEmbedding:
    """Standardise every feature channel, then project on the leading principal components."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    components: np.ndarray  # (F, n)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def iter_fit(
        cls,
        store: Any,
        n_components: int = 32,
        seed: int = 0,
        budget_mb: float = 512,
    ) -> Generator[Progress, None, FeatureEmbedding]:
        """Fit on a seeded sample of the pixels of ``store`` (a whole-scene feature store), read
        in chunks with a progress record after each."""
        from sklearn.decomposition import PCA

        coords = np.argwhere(np.ones(store.centre.shape[:2], bool))
        n_feat = 2 * int(np.prod(store.centre.shape[2:]))
        n_sample = int(min(len(coords), max(4 * n_components, budget_mb * 2**20 // (8 * n_feat))))
        if n_sample < 3:
            raise InputError(f"an embedding needs at least 3 pixels; the scene has {len(coords)}")
        n_components = min(n_components, n_sample - 1, n_feat)  # a tiny scene has fewer
        rng = np.random.default_rng(seed)
        sample = coords[np.sort(rng.choice(len(coords), n_sample, replace=False))]
        x = np.empty((n_sample, n_feat), np.float32)
        step = max(1, _CHUNK * 2**13 // n_feat)  # ~100 MB of float32 a chunk
        for s in range(0, n_sample, step):
            _flat(*store.pixels(sample[s : s + step]), out=x[s : s + step])
            yield {"stage": "embedding", "step": min(s + step, n_sample), "total": n_sample}
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        for s in range(0, n_sample, step):  # in place, a chunk between records
            x[s : s + step] -= mean
            x[s : s + step] /= scale
            yield {"stage": "embedding", "step": n_sample, "total": n_sample}
        pca = PCA(n_components, svd_solver="randomized", random_state=seed).fit(x)
        # whitened: every component of unit variance over the scene, so an RBF kernel weighs the
        # 32nd direction as much as the first (measured: +3 OA points at 10 labels per class)
        components = (pca.components_.T / np.sqrt(pca.explained_variance_)).astype(np.float32)
        # fixed signs (largest loading positive): two fits of the same sample give the same arrays
        components *= np.sign(components[np.abs(components).argmax(0), np.arange(n_components)])
        return cls(mean.astype(np.float32), scale.astype(np.float32), components)

    @classmethod
    def fit(cls, store: Any, **kwargs: Any) -> FeatureEmbedding:
        """Plain-function form of :meth:`iter_fit`."""
        return run(cls.iter_fit(store, **kwargs))

    def transform_rows(self, centre: np.ndarray, glob: np.ndarray) -> np.ndarray:
        """Embedded rows ``(N, n)`` float32 of features ``(N, T, D)`` each."""
        x = _flat(centre, glob)
        if x.shape[1] != len(self.mean):
            raise InputError(
                f"features of {x.shape[1]} values per pixel; the embedding was fitted on "
                f"{len(self.mean)}"
            )
        return ((x - self.mean) / self.scale) @ self.components

    def iter_transform(self, store: Any) -> Generator[Progress, None, np.ndarray]:
        """The embedding of every pixel of ``store``: ``(H, W, n)`` float32; a progress record
        per chunk of pixels read."""
        H, W = store.centre.shape[:2]
        out = np.empty((H * W, self.n_components), np.float32)
        total = -(-H * W // _CHUNK)
        for i, (idx, centre, glob) in enumerate(store.chunks(_CHUNK)):
            out[idx] = self.transform_rows(centre, glob)
            yield {"stage": "embedding", "step": i + 1, "total": total}
        return out.reshape(H, W, -1)

    def transform(self, store: Any) -> np.ndarray:
        """Plain-function form of :meth:`iter_transform`."""
        return run(self.iter_transform(store))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"embedding.{k}": v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureEmbedding:
        return cls(
            *(np.asarray(arrays[f"embedding.{k}"]) for k in ("mean", "scale", "components"))
        )
