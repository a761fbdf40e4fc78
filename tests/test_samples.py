"""Sample data: Indian Pines from tensorly, and the seeded synthetic scene."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd import samples

# Per-class counts of the Indian Pines ground truth (../shared/data/README.md).
IP_COUNTS = [46, 1428, 830, 237, 483, 730, 28, 478, 20, 972, 2455, 593, 205, 1265, 386, 93]


def test_indian_pines():
    cube, labels = samples.load_indian_pines()
    assert cube.shape == (145, 145, 200) and cube.data.dtype == np.uint16
    assert cube.wavelengths.shape == (200,) and cube.wavelength_units == "nm"
    assert 395 < cube.wavelengths[0] < cube.wavelengths[-1] < 2510
    assert labels.data.shape == (145, 145)
    assert labels.class_names == samples.INDIAN_PINES_CLASSES and len(labels.class_names) == 16
    assert np.bincount(labels.data.ravel(), minlength=17)[1:].tolist() == IP_COUNTS
    assert labels.colors.shape == (17, 3) and len({tuple(c) for c in labels.colors}) == 17


def test_indian_pines_matches_the_shared_ground_truth(shared_data):
    from napari_mtmsd import io

    _, labels = samples.load_indian_pines()
    shared = io.read_labels(shared_data / "indian_pines" / "Indian_pines_gt.mat")
    np.testing.assert_array_equal(labels.data, shared.data)


def test_synthetic_is_seeded():
    a_cube, a_gt = samples.synthetic_scene(32, 40, 12, 4, seed=3)
    b_cube, b_gt = samples.synthetic_scene(32, 40, 12, 4, seed=3)
    c_cube, _ = samples.synthetic_scene(32, 40, 12, 4, seed=4)
    np.testing.assert_array_equal(a_cube.data, b_cube.data)
    np.testing.assert_array_equal(a_gt.data, b_gt.data)
    assert not np.allclose(a_cube.data, c_cube.data)


def test_synthetic_scene_structure():
    cube, gt = samples.synthetic_scene(96, 80, 30, 6, noise=0.0, seed=0)
    assert cube.shape == (96, 80, 30) and cube.data.dtype == np.float32
    assert gt.data.shape == (96, 80) and set(np.unique(gt.data)) == set(range(1, 7))
    assert 0 <= cube.data.min() and cube.data.max() <= 1
    # smooth spectra: neighbouring bands differ far less than the spectrum's range
    spectrum = cube.data[10, 10]
    assert np.abs(np.diff(spectrum)).max() < 0.5 * np.ptp(cube.data)
    # classes are separable by their mean spectra...
    means = np.stack([cube.data[gt.data == k].mean(axis=0) for k in range(1, 7)])
    nearest = np.linalg.norm(cube.data[..., None, :] - means, axis=-1).argmin(-1) + 1
    assert (nearest == gt.data).mean() > 0.8
    # ...and borders are mixed: pixels next to another class are not pure class spectra
    border = np.zeros_like(gt.data, dtype=bool)
    border[:, 1:] |= gt.data[:, 1:] != gt.data[:, :-1]
    interior = ~border
    interior[:, :-1] &= ~border[:, 1:]
    dist = np.linalg.norm(cube.data - means[gt.data - 1], axis=-1)
    assert dist[border].mean() > 2 * np.median(dist[interior])


def test_synthetic_noise_level():
    clean, _ = samples.synthetic_scene(40, 40, 20, 3, noise=0.0, seed=1)
    noisy, _ = samples.synthetic_scene(40, 40, 20, 3, noise=0.05, seed=1)
    assert np.std(noisy.data - clean.data) == pytest.approx(0.05, rel=0.15)


@pytest.mark.parametrize(
    "kwargs",
    [{"height": 1}, {"bands": 2}, {"n_classes": 0}, {"n_classes": 300}, {"noise": -1}],
)
def test_synthetic_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        samples.synthetic_scene(**kwargs)
