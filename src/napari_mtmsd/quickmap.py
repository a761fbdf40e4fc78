"""The first map, before any diffusion model exists: the few-label recipe on the spectra.

Pretraining takes minutes; a user who has painted a few strokes should see a map at once. The
same classifier as the few-label MTMSD head (``fewlabel.SpatialSVM``: edge-aware smoothed
vectors, RBF-SVM, regularised probabilities) runs on the leading principal components of the
spectra instead of the diffusion embedding: a second or two on Indian Pines, and replaced by the
MTMSD map when pretraining ends (docs/benchmarks.md, "Few labels", has both accuracies).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .fewlabel import SpatialSVM
from .spatial import scale_guide

N_COMPONENTS = 30
_FIT_PIXELS = 50_000


@dataclasses.dataclass
class SpectralVectors:
    """Principal components of the spectra ``(H, W, n)`` and the scene's guide ``(H, W)``;
    computed once per cube, reused by every quick map of it."""

    vectors: np.ndarray
    guide: np.ndarray

    @classmethod
    def of(cls, cube: Any, n_components: int = N_COMPONENTS, seed: int = 0) -> SpectralVectors:
        from .preprocess import Preprocessor, as_cube

        cube = as_cube(cube)
        n = min(n_components, int(cube.data.shape[2]))
        pre = Preprocessor.fit(cube, n, max_pixels=_FIT_PIXELS, seed=seed)
        vectors = pre.transform(cube.data)
        return cls(vectors, scale_guide(vectors[..., 0], cube.valid_mask()))


def quick_map(
    spectral: SpectralVectors, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class map ``(H, W)`` int32, confidence ``(H, W)`` and probabilities ``(H, W, K)`` from the
    painted ``labels (H, W)`` (0 = unlabelled)."""
    head = SpatialSVM()
    smoothed = head.smooth(spectral.vectors, spectral.guide)
    proba = head.fit(smoothed, labels).predict_proba(smoothed, spectral.guide)
    best = proba.argmax(axis=-1)
    class_map = head.classes_[best].astype(np.int32)
    return class_map, np.take_along_axis(proba, best[..., None], -1)[..., 0], proba
