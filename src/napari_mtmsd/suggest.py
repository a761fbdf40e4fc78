"""Where to paint next: the places whose labels would help the classifier most.

Active learning by uncertainty sampling with spatial diversity: the uncertainty of the map (one
minus the confidence of its class, which every classifier here gives) is smoothed over a window,
so a suggestion
stands for a region the classifier is unsure about rather than a single noisy pixel; the most
uncertain places are then taken greedily, each at least ``spacing`` pixels from the others and
from pixels already labelled (a stroke of labels nearby already informs that place).
``benchmarks/few_labels.py --rounds`` compares a simulated user who labels these places with one
who labels random places.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError
from .spatial import box_mean


def suggest(
    uncertain: np.ndarray,
    labels: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    n: int = 10,
    spacing: int = 8,
    radius: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` places to label next by ``uncertain (H, W)`` (higher: less sure):
    ``(coords (m, 2) int, scores (m,))``, best first (``m <= n`` when the scene has fewer
    places far enough apart).

    ``radius``: half width of the window the uncertainty is averaged over; ``spacing``: the
    smallest distance (pixels) between two suggestions and between a suggestion and a label.
    """
    if int(n) < 1 or int(spacing) < 1:
        raise InputError(f"suggestions n={n}, spacing={spacing}: expected positive integers")
    uncertain = np.asarray(uncertain, np.float32)
    if uncertain.ndim != 2:
        raise InputError(f"an uncertainty map of shape {uncertain.shape}: expected (H, W)")
    score = box_mean(uncertain, radius) if radius > 0 else uncertain
    free = np.ones(score.shape, bool) if valid is None else np.asarray(valid, bool).copy()
    if labels is not None and np.any(labels):
        near = ndimage.distance_transform_edt(np.asarray(labels) == 0) < spacing
        free &= ~near
    order = np.argsort(-score, axis=None, kind="stable")
    order = order[free.reshape(-1)[order]]
    blocked = ~free  # near a label, invalid, or near a suggestion already taken
    height, width = score.shape
    coords: list[tuple[int, int]] = []
    for flat in order:  # a pixel blocked meanwhile costs one look-up, not a distance check
        r, c = divmod(int(flat), width)
        if blocked[r, c]:
            continue
        coords.append((r, c))
        if len(coords) == n:
            break
        rows = slice(max(r - spacing + 1, 0), min(r + spacing, height))
        cols = slice(max(c - spacing + 1, 0), min(c + spacing, width))
        yy, xx = np.ogrid[rows, cols]  # clipped to the scene, as the slices of ``blocked``
        blocked[rows, cols] |= (yy - r) ** 2 + (xx - c) ** 2 < spacing**2
    out = np.array(coords, np.int64).reshape(-1, 2)
    return out, score[out[:, 0], out[:, 1]]
