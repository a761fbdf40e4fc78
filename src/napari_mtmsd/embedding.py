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
import functools
from collections.abc import Generator
from typing import Any

import numpy as np

from ._progress import Progress, run, waiting
from .errors import InputError

#: Pixels read per chunk when projecting a whole store (about 0.3 s of work with the ``cpu``
#: preset's features).
_CHUNK = 1024


def _pca(x: np.ndarray, n_components: int, seed: int) -> Any:
    """The randomized PCA of ``x`` (scikit-learn imported here, in the fitting thread)."""
    from sklearn.decomposition import PCA

    return PCA(n_components, svd_solver="randomized", random_state=seed).fit(x)


def _iter_sum(
    x: np.ndarray, step: int, mean: np.ndarray | None, done: int, record: Any
) -> Generator[Progress, None, np.ndarray]:
    """The column sums of ``x`` (of its squared deviations from ``mean`` when given), a chunk of
    ``step`` rows between records, added row after row in float32 exactly as numpy's
    ``x.mean(0)`` / ``x.std(0)`` add them (the embedding is the same bit for bit): each chunk's
    sum starts from the sum so far."""
    acc = None
    for s in range(0, len(x), step):
        chunk = x[s : s + step] if mean is None else np.square(x[s : s + step] - mean)
        first = chunk[0].copy()
        if acc is not None:
            chunk[0] += acc
        acc = np.add.reduce(chunk, axis=0)
        chunk[0] = first  # x itself is left as it was
        yield record(done + min(s + step, len(x)))
    return acc


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
        """Fit on a seeded sample of the pixels of ``store`` (a whole-scene feature store): read,
        averaged, standardised in chunks with a progress record after each; the randomized PCA
        runs in a thread meanwhile yielding records (``_progress.waiting``)."""
        H, W = store.shape[:2]
        n_feat = 2 * int(np.prod(store.shape[2:]))
        n_sample = int(min(H * W, max(4 * n_components, budget_mb * 2**20 // (8 * n_feat))))
        if n_sample < 3:
            raise InputError(f"an embedding needs at least 3 pixels; the scene has {H * W}")
        n_components = min(n_components, n_sample - 1, n_feat)  # a tiny scene has fewer
        rng = np.random.default_rng(seed)  # raster indices: no (H * W, 2) table of coordinates
        sample = np.stack(divmod(np.sort(rng.choice(H * W, n_sample, replace=False)), W), axis=1)
        x = np.empty((n_sample, n_feat), np.float32)
        step = max(1, _CHUNK * 2**13 // n_feat)  # ~25 MB of float32 a chunk
        total = 5 * n_sample  # read, mean, deviations, standardise: a pass each; then the PCA

        def record(done: int) -> Progress:
            return {"stage": "embedding", "step": done, "total": total}

        for s in range(0, n_sample, step):
            _flat(*store.pixels(sample[s : s + step]), out=x[s : s + step])
            yield record(min(s + step, n_sample))
        mean = yield from _iter_sum(x, step, None, n_sample, record)
        mean /= n_sample
        scale = yield from _iter_sum(x, step, mean, 2 * n_sample, record)
        scale = np.sqrt(scale / n_sample)
        scale[scale == 0] = 1.0
        for s in range(0, n_sample, step):  # in place, a chunk between records
            x[s : s + step] -= mean
            x[s : s + step] /= scale
            yield record(3 * n_sample + min(s + step, n_sample))
        work = functools.partial(_pca, x, n_components, seed)  # cannot be cut
        pca = yield from waiting(work, record(4 * n_sample))
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
        H, W = store.shape[:2]
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
