"""A classifier sized to a few painted pixels: RBF-SVM on edge-aware smoothed pixel vectors.

The recipe (each step measured on its own in docs/benchmarks.md, "Few labels"):

1. per-pixel vectors ``(H, W, n)``: the scene embedding of the diffusion features
   (``embedding.FeatureEmbedding``), or, before any diffusion model exists, principal components
   of the spectra (the quick first map);
2. the vectors are smoothed along the scene's edges (``spatial.guided_filter``, radius 4): a
   pixel is described by its field rather than by its own noisy value;
3. an RBF-SVM (C = 10, ``gamma='scale'``) fitted on the labelled pixels: a handful of support
   vectors per class, which is what 5-20 labels per class can determine; its one-vs-rest
   decision values, divided by a temperature of 0.5, give class probabilities by a softmax
   (deterministic, no internal cross-validation, so it works from one pixel per class);
4. the probability map is regularised along the same edges (``spatial.regularise``, radius 6).

The SVM is saved as its training vectors and labels and refitted on load (libsvm without
probability estimates is deterministic): no pickle, a few kB.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .errors import InputError
from .spatial import guided_filter, regularise

TEMPERATURE = 0.5


@dataclasses.dataclass
class SpatialSVM:
    """Steps 2-4 of the recipe above, on vectors ``(H, W, n)`` and a guide ``(H, W)``."""

    c: float = 10.0
    feature_radius: int = 4
    map_radius: int = 6
    eps: float = 1e-2
    x_train: np.ndarray | None = None  # (N, n) smoothed vectors of the training pixels
    y_train: np.ndarray | None = None  # (N,) their labels

    def smooth(self, vectors: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """Step 2: the vectors filtered along the guide (compute once per scene)."""
        return guided_filter(vectors, guide, self.feature_radius, self.eps)

    def fit(self, smoothed: np.ndarray, labels: np.ndarray) -> SpatialSVM:
        """Fit on the pixels where ``labels (H, W)`` > 0 of ``smoothed`` vectors ``(H, W, n)``."""
        labels = np.asarray(labels)
        if labels.shape != smoothed.shape[:2]:
            raise InputError(f"labels of shape {labels.shape} for vectors of {smoothed.shape[:2]}")
        mask = labels > 0
        self.x_train = np.asarray(smoothed[mask], np.float32)
        self.y_train = labels[mask].astype(np.int64)
        if len(np.unique(self.y_train)) < 2:
            raise InputError(
                "the few-label classifier needs labelled pixels of at least 2 classes"
            )
        self._svm = None
        return self

    @property
    def classes_(self) -> np.ndarray:
        return np.unique(self._fitted_y())

    def predict_proba_rows(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` of smoothed vectors ``(N, n)`` (no map regularisation)."""
        decision = self._model().decision_function(np.asarray(rows, np.float32))
        if decision.ndim == 1:  # two classes: one signed distance
            decision = np.stack([-decision, decision], axis=1)
        z = decision / TEMPERATURE
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict_proba(self, smoothed: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """Regularised class probabilities ``(H, W, K)`` (columns in ``classes_`` order)."""
        H, W, n = smoothed.shape
        raw = self.predict_proba_rows(smoothed.reshape(H * W, n)).reshape(H, W, -1)
        return regularise(raw, guide, self.map_radius, self.eps)

    def _fitted_y(self) -> np.ndarray:
        if self.y_train is None:
            raise InputError("the few-label classifier is not fitted")
        return self.y_train

    def _model(self) -> Any:
        if getattr(self, "_svm", None) is None:
            from sklearn.svm import SVC

            self._svm = SVC(C=self.c, kernel="rbf", gamma="scale")
            self._svm.fit(self.x_train, self._fitted_y())
        return self._svm

    def to_arrays(self) -> dict[str, np.ndarray]:
        self._fitted_y()
        params = np.array([self.c, self.feature_radius, self.map_radius, self.eps], np.float64)
        return {"svm.params": params, "svm.x_train": self.x_train, "svm.y_train": self.y_train}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SpatialSVM:
        c, feature_radius, map_radius, eps = (float(v) for v in arrays["svm.params"])
        return cls(
            c,
            int(feature_radius),
            int(map_radius),
            eps,
            np.asarray(arrays["svm.x_train"], np.float32),
            np.asarray(arrays["svm.y_train"], np.int64),
        )
