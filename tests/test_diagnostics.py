"""The display aids, headless: features of each timestep as colours, attention per class."""

from __future__ import annotations

import numpy as np

from napari_mtmsd._progress import run
from napari_mtmsd.diagnostics import iter_attention, iter_class_attention, iter_pca_rgb


def test_pca_rgb_shows_the_structure_of_each_timestep():
    rng = np.random.default_rng(0)
    h, w, d = 24, 20, 8
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    centre = rng.normal(scale=0.1, size=(h, w, 2, d)).astype(np.float16)
    centre[left, 0, 0] += 3.0  # timestep 0: the left half differs along one direction
    centre[:12, :, 1, 1] += 3.0  # timestep 1: the top half, along another
    records = []
    rgb = run(iter_pca_rgb(centre, (10, 500)), records.append)
    assert rgb.shape == (2, h, w, 3) and rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    assert [r["timestep"] for r in records] == [10, 500]
    first = rgb[0, :, :, 0]  # the leading component splits the halves of each timestep
    assert abs(first[left].mean() - first[~left].mean()) > 0.5
    top = np.zeros((h, w), bool)
    top[:12] = True
    second = rgb[1, :, :, 0]
    assert abs(second[top].mean() - second[~top].mean()) > 0.5
    # signs are fixed: the same features give the same colours
    np.testing.assert_array_equal(run(iter_pca_rgb(centre, (10, 500))), rgb)


class _Attention:
    """A classifier stand-in whose attention puts pixel i's weight on timestep i % 2."""

    def timestep_attention(self, centre: np.ndarray, glob: np.ndarray) -> np.ndarray:
        weights = np.zeros((len(centre), 2), np.float32)
        weights[np.arange(len(centre)), np.arange(len(centre)) % 2] = 1.0
        return weights


def test_attention_is_averaged_per_class():
    n = 8
    centre = glob = np.zeros((n, 2, 3), np.float16)
    y = np.array([1, 2, 1, 2, 1, 2, 3, 3])  # class 1 on even pixels, 2 on odd, 3 on both
    classes, weights = run(iter_attention(_Attention(), centre, glob, y))
    assert classes.tolist() == [1, 2, 3]
    np.testing.assert_allclose(weights, [[1, 0], [0, 1], [0.5, 0.5]])


class _Store:
    """A feature source of a 2 x 4 scene whose pixel i has features equal to i."""

    def pixels(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = (coords[:, 0] * 4 + coords[:, 1]).astype(np.float16)
        x = np.broadcast_to(flat[:, None, None], (len(coords), 2, 3)).copy()
        return x, x


class _ByFeature:
    """Attention on timestep 0 for even features, 1 for odd ones."""

    def timestep_attention(self, centre: np.ndarray, glob: np.ndarray) -> np.ndarray:
        odd = centre[:, 0, 0].astype(int) % 2
        return np.stack([1 - odd, odd], axis=1).astype(np.float32)


def test_attention_on_the_labelled_pixels():
    labels = np.array([[1, 0, 1, 0], [0, 2, 0, 2]])  # class 1 at pixels 0, 2; class 2 at 5, 7
    classes, weights = run(iter_class_attention(_ByFeature(), _Store(), labels))
    assert classes.tolist() == [1, 2]
    np.testing.assert_allclose(weights, [[1, 0], [0, 1]])
