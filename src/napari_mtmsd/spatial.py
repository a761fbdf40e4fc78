"""Edge-aware spatial regularisation: the guided filter (He, Sun and Tang, TPAMI 2013) and the
extended random walker (Kang, Li, Fang and Benediktsson, TGRS 2015).

Neighbouring pixels of one field share a class, and a class boundary is where the scene's
spectra change. The guided filter averages a map (class probabilities, or feature vectors) over a
window, but only along the guide image: across an edge of the guide it keeps the map's own
values. In hyperspectral classification this is the "edge-preserving filtering" of Kang, Li and
Benediktsson (TGRS 2014), guided by the first principal component of the spectra. With few labels
it turns isolated errors inside a field into the field's majority class (docs/benchmarks.md,
"Few labels", has the measured gain).

The random walker regularises a probability map the same way, globally: every pixel's class
probabilities are pulled towards its neighbours' across weak edges of the guide and towards the
classifier's own (the prior) everywhere, and the painted pixels hold their class, so a field that
holds a painted pixel follows it.

Everything here is numpy/scipy on ``(H, W, K)`` arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError

#: Pixels sampled to fit the guide's principal component (the direction, not the values).
_GUIDE_SAMPLE = 50_000
#: Pixels of context beyond a window's core for :func:`random_walker` on the window to give the
#: core the whole scene's map: the same classes, probabilities within a hundredth (docs/scaling.md).
RW_REACH = 40


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2 r + 1)^2`` window of every pixel (edges mirrored), per channel."""
    size = (2 * radius + 1, 2 * radius + 1) + (1,) * (x.ndim - 2)
    return ndimage.uniform_filter(x, size=size, mode="reflect")


def guided_filter(x: np.ndarray, guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Filter every channel of ``x`` (H, W) or (H, W, K) along the grey ``guide`` (H, W).

    ``radius`` is the window's half width in pixels; ``eps`` (in squared guide units; the guide is
    scaled to [0, 1]) sets which guide contrasts count as edges: a window whose guide varies less
    than ``sqrt(eps)`` is smoothed flat.
    """
    if int(radius) < 1 or not float(eps) > 0:
        raise InputError(
            f"guided filter radius={radius}, eps={eps}: expected radius >= 1, eps > 0"
        )
    x = np.asarray(x, dtype=np.float32)
    guide = np.asarray(guide, dtype=np.float32)
    if guide.shape != x.shape[:2]:
        raise InputError(f"guide of shape {guide.shape} for a map of shape {x.shape[:2]}")
    g = guide if x.ndim == 2 else guide[..., None]
    mean_g, mean_x = box_mean(g, radius), box_mean(x, radius)
    cov = box_mean(g * x, radius) - mean_g * mean_x
    var = box_mean(g * g, radius) - mean_g * mean_g
    a = cov / (var + eps)
    b = mean_x - a * mean_g
    return box_mean(a, radius) * g + box_mean(b, radius)


def guide_image(cube: Any, seed: int = 0) -> np.ndarray:
    """The guide of :func:`guided_filter` for ``cube``: its first principal component (the
    project's ``Preprocessor``: fitted on a seeded sample, applied in row chunks, so a
    memory-mapped cube is never held as float), see :func:`scale_guide`."""
    from .preprocess import Preprocessor, as_cube

    cube = as_cube(cube)
    component = Preprocessor.fit(cube, 1, max_pixels=_GUIDE_SAMPLE, seed=seed).transform(cube.data)
    return scale_guide(component[..., 0], cube.valid_mask())


def scale_guide(
    image: np.ndarray, valid: np.ndarray | None = None, bounds: tuple[float, float] | None = None
) -> np.ndarray:
    """``image (H, W)`` scaled so its 1st and 99th percentiles over ``valid`` pixels are 0 and 1
    (clipped; invalid pixels 0): ``eps`` then means the same contrast in every scene. A window of
    a scene passes the scene's ``bounds`` (:func:`guide_bounds`) to be scaled as the whole."""
    image = np.asarray(image, np.float32)
    valid = np.ones(image.shape, bool) if valid is None else np.asarray(valid, bool)
    lo, hi = guide_bounds(image[valid]) if bounds is None else bounds
    guide = np.clip((image - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0).astype(np.float32)
    guide[~valid] = 0.0
    return guide


def guide_bounds(values: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of the guide's values at valid pixels (``scale_guide``)."""
    if not values.size:
        raise InputError("no valid pixel to build a guide image from")
    lo, hi = np.percentile(values, [1, 99])  # numpy scalars of the values' type: as before
    return lo, hi


def regularise(
    proba: np.ndarray, guide: np.ndarray, radius: int = 6, eps: float = 1e-2
) -> np.ndarray:
    """Class probabilities ``(H, W, K)`` filtered along ``guide`` and renormalised to sum to 1."""
    out = np.clip(guided_filter(proba, guide, radius, eps), 0.0, None)
    total = out.sum(axis=-1, keepdims=True)
    uniform = np.full_like(out, 1.0 / out.shape[-1])
    return np.divide(out, total, out=uniform, where=total > 0)


def random_walker(
    prior: np.ndarray,
    guide: np.ndarray,
    seeds: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    edge: float = 1e-3,
    gamma: float = 3e-3,
) -> np.ndarray:
    """The extended random walker's class probabilities ``(H, W, K)`` float32.

    Minimises ``sum_ij w_ij |x_i - x_j|^2 + gamma sum_i |x_i - prior_i|^2`` over the
    4-connected pixel grid, with ``w_ij = exp(-(guide_i - guide_j)^2 / edge)`` (``edge`` in
    squared guide units: the guide is scaled to [0, 1]) and the pixels where ``seeds (H, W)``
    >= 0 fixed to that class index. Invalid pixels are cut from the grid. A pixel's reach is
    about ``1 / sqrt(gamma)`` pixels inside a uniform field (``RW_REACH`` bounds it); one sparse
    factorisation per call, so call it on windows of at most a few hundred pixels a side.
    """
    from scipy import sparse
    from scipy.sparse.linalg import splu

    prior = np.asarray(prior, np.float64)
    H, W, K = prior.shape
    g = np.asarray(guide, np.float64)
    if g.shape != (H, W):
        raise InputError(f"guide of shape {g.shape} for a map of shape {(H, W)}")
    if not (float(edge) > 0 and float(gamma) > 0):
        raise InputError(f"random walker edge={edge}, gamma={gamma}: expected both > 0")
    ok = np.ones((H, W), bool) if valid is None else np.asarray(valid, bool)
    idx = np.arange(H * W).reshape(H, W)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    flat_g, flat_ok = g.ravel(), ok.ravel()
    w = np.exp(-((flat_g[a] - flat_g[b]) ** 2) / float(edge)) * (flat_ok[a] & flat_ok[b])
    adjacency = sparse.coo_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), (H * W,) * 2)
    adjacency = adjacency.tocsr()
    laplacian = sparse.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    fixed = np.zeros(H * W, bool) if seeds is None else np.asarray(seeds).ravel() >= 0
    free = ~fixed
    held = np.eye(K)[np.asarray(seeds).ravel()[fixed]] if fixed.any() else np.zeros((0, K))
    system = laplacian[free][:, free] + float(gamma) * sparse.identity(int(free.sum()))
    rhs = float(gamma) * prior.reshape(H * W, K)[free] - laplacian[free][:, fixed] @ held
    out = np.empty((H * W, K))
    out[free] = splu(system.tocsc()).solve(rhs) if free.any() else rhs
    out[fixed] = held
    return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(H, W, K)
