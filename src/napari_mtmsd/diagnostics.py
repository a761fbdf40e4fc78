"""What the diffusion model sees: features of a timestep as colours, and which timesteps each
class attends to. Display aids, Qt-free (the Inspect section of the panel shows them)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from ._progress import Progress

PCA_FIT_PIXELS = 5_000  # pixels sampled to fit each timestep's 3 components (display only)


def iter_pca_rgb(
    centre: np.ndarray, timesteps: tuple[int, ...], seed: int = 0
) -> Generator[Progress, None, np.ndarray]:
    """(H, W, T, D) features -> (T, H, W, 3) float32 RGB in [0, 1], one PCA per timestep.

    The 3 leading principal components of each timestep's features, each stretched between its
    1st and 99th percentile, with signs fixed so colours stay comparable from one timestep to
    the next.
    """
    h, w, n_t, d = centre.shape
    rng = np.random.default_rng(seed)
    pick = rng.choice(h * w, size=min(h * w, PCA_FIT_PIXELS), replace=False)
    out = np.empty((n_t, h, w, 3), np.float32)
    for ti in range(n_t):
        x = np.asarray(centre[:, :, ti, :], dtype=np.float32).reshape(h * w, d)
        out[ti] = _pca_rgb(x, pick).reshape(h, w, 3)
        yield {"stage": "PCA", "step": ti + 1, "total": n_t, "timestep": timesteps[ti]}
    return out


def _pca_rgb(x: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 3) in [0, 1]: components fitted on the rows ``pick``."""
    sample = x[pick]
    mean = sample.mean(axis=0)
    sample -= mean
    # leading eigenvectors of the D x D scatter matrix: ~10x faster than an SVD of the sample
    _, vectors = np.linalg.eigh(sample.T @ sample)
    comps = vectors[:, ::-1][:, :3].T.copy()
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    y = (x - mean) @ comps.T
    lo, hi = np.percentile(y, [1, 99], axis=0)
    y = np.clip((y - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    rgb = np.zeros((len(x), 3), np.float32)
    rgb[:, : y.shape[1]] = y
    return rgb


def iter_attention(
    classifier: Any, centre: np.ndarray, glob: np.ndarray, y: np.ndarray
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Mean timestep attention per class over the given pixels -> (classes, (K, T) weights)."""
    weights = np.asarray(classifier.timestep_attention(centre, glob), dtype=np.float32)
    yield {"stage": "attention", "step": 1, "total": 1}
    classes = np.unique(y)
    return classes, np.stack([weights[y == c].mean(axis=0) for c in classes])


def iter_class_attention(
    classifier: Any, store: Any, labels: np.ndarray
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """:func:`iter_attention` on the labelled pixels of ``labels`` (H, W), their features read
    from ``store`` (a whole-scene feature source) in the job."""
    from .pipeline import labelled_pixels

    coords, y = labelled_pixels(labels)
    centre, glob = store.pixels(coords)
    return (yield from iter_attention(classifier, centre, glob, y))
