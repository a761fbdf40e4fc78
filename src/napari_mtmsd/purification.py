"""Class- and timestep-oriented channel purification (method.md section 4), vectorised.

A channel scores high when its class means are *spread out* (low mean product between pairs of
min-max normalised class means, high variance across classes) and when it changes across
timesteps within each class. The reference code loops over every (class, class', timestep,
channel); here the mean over ordered pairs ``c != c'`` of ``Z_c Z_c'`` is
``((sum Z)^2 - sum Z^2) / (K (K - 1))``, so the whole score is a handful of array reductions.
Only the per-class means are ever held in float64, never a float64 copy of the features.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: Bytes of float64 work memory per chunk when accumulating class sums.
_CHUNK_BYTES = 64 * 2**20


def class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes (K,), M (K, T, D) float64)``: mean feature of each class.

    Accumulated in row chunks converted to float64 one at a time, so float16 inputs of any size
    cost only ``K x T x D`` doubles plus one chunk.
    """
    features, labels = _check(features, labels)
    n, t, d = features.shape
    classes, inverse = np.unique(labels, return_inverse=True)
    flat = features.reshape(n, t * d)
    sums = np.zeros((len(classes), t * d))
    rows = max(1, _CHUNK_BYTES // (8 * t * d))
    for start in range(0, n, rows):
        chunk = np.asarray(flat[start : start + rows], dtype=np.float64)
        one_hot = np.zeros((len(classes), len(chunk)))
        one_hot[inverse[start : start + rows], np.arange(len(chunk))] = 1.0
        sums += one_hot @ chunk
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
    means = (sums / counts[:, None]).reshape(len(classes), t, d)
    if not np.all(np.isfinite(means)):
        raise InputError("features contain NaN or Inf values: expected finite feature values")
    return classes, means


def _pair_term(z: np.ndarray, axis: int, lam: float) -> np.ndarray:
    """``-lam * mean_{i != j} z_i z_j + (1 - lam) * Var(z)`` along ``axis`` (ordered pairs)."""
    m = z.shape[axis]
    total = z.sum(axis=axis)
    squares = (z * z).sum(axis=axis)
    pair_mean = (total * total - squares) / (m * (m - 1))
    variance = z.var(axis=axis)
    return -lam * pair_mean + (1.0 - lam) * variance


def _minmax(x: np.ndarray, axis: int, eps: float) -> np.ndarray:
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    return (x - lo) / (hi - lo + eps)


def scores_from_means(
    means: np.ndarray, lam: float = 0.8, timestep_weight: float = 0.5, eps: float = 1e-12
) -> np.ndarray:
    """Purification score per channel from class means ``M (K, T, D)``; see :func:`purification_scores`."""
    k, t, _ = means.shape
    if k < 2:
        raise InputError(
            f"purification needs training labels of at least 2 classes, got {k} class"
        )
    z = _minmax(means, axis=0, eps=eps)  # over classes, per (t, d)
    score = _pair_term(z, axis=0, lam=lam).sum(axis=0)
    if t >= 2:  # with a single timestep there are no timestep pairs: the term is absent
        y = _minmax(means, axis=1, eps=eps)  # over timesteps, per (c, d)
        score = score + timestep_weight * _pair_term(y, axis=1, lam=lam).sum(axis=0)
    return score


def purification_scores(
    features: np.ndarray,
    labels: np.ndarray,
    lam: float = 0.8,
    timestep_weight: float = 0.5,
    eps: float = 1e-12,
) -> np.ndarray:
    """Score ``S (D,)`` of every channel of ``features (N, T, D)`` for training ``labels (N,)``.

    ``S = S_cls + timestep_weight * S_t`` exactly as method.md section 4 (population variance,
    means over ordered pairs); ``eps`` in the min-max denominators makes constant channels score
    0 in that term instead of dividing by zero. Higher is better.
    """
    _, means = class_means(features, labels)
    return scores_from_means(means, lam=lam, timestep_weight=timestep_weight, eps=eps)


def select_channels(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    lam: float = 0.8,
    timestep_weight: float = 0.5,
    eps: float = 1e-12,
) -> np.ndarray:
    """Indices (int64) of the ``k`` best channels, **best first** (ties keep channel order).

    ``k`` larger than the number of channels returns every channel, ranked.
    """
    if int(k) < 1:
        raise InputError(f"number of channels to keep k={k}: expected a positive integer")
    score = purification_scores(features, labels, lam, timestep_weight, eps)
    order = np.argsort(-score, kind="stable")
    return order[: int(k)].astype(np.int64)


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels).reshape(-1)
    if features.ndim != 3:
        raise InputError(f"features of shape {features.shape}: expected (N, T, D)")
    if len(labels) != len(features):
        raise InputError(
            f"{len(labels)} labels for {len(features)} feature rows: expected one label per row"
        )
    if len(labels) == 0:
        raise InputError("no training pixels: expected at least one labelled pixel per class")
    return features, labels
