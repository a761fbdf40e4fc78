"""Guided filter and probability regularisation (spatial.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd.errors import InputError
from napari_mtmsd.samples import synthetic_scene
from napari_mtmsd.spatial import box_mean, guide_image, guided_filter, regularise, scale_guide


def _two_fields(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A guide with a vertical edge, the true map (0 left, 1 right) and a noisy copy of it."""
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    truth = (guide > 0.5).astype(np.float32)
    noisy = truth + np.random.default_rng(seed).normal(0, noise, truth.shape).astype(np.float32)
    return guide, truth, noisy


def test_guided_filter_removes_noise_inside_fields_and_keeps_the_edge():
    guide, truth, noisy = _two_fields(0.4)
    out = guided_filter(noisy, guide, radius=4, eps=1e-2)
    assert np.abs(out - truth).mean() < 0.3 * np.abs(noisy - truth).mean()
    # the edge stays sharp: the columns either side of it keep their field's value
    assert out[:, 19].mean() < 0.15 and out[:, 20].mean() > 0.85
    # a plain box filter of the same size blurs across the edge
    blurred = box_mean(noisy, 4)
    assert blurred[:, 19].mean() > 0.3


def test_guided_filter_channels_are_filtered_independently():
    guide, _, noisy = _two_fields(0.3)
    stack = np.stack([noisy, 1 - noisy], axis=-1)
    out = guided_filter(stack, guide, 3, 1e-2)
    np.testing.assert_allclose(out[..., 0], guided_filter(noisy, guide, 3, 1e-2), atol=1e-5)
    np.testing.assert_allclose(out[..., 1], guided_filter(1 - noisy, guide, 3, 1e-2), atol=1e-5)


def test_regularise_returns_distributions_and_fixes_isolated_errors():
    guide, truth, _ = _two_fields(0.0)
    proba = np.stack([1 - truth, truth], axis=-1) * 0.8 + 0.1
    proba[10, 5] = [0.2, 0.8]  # one wrong pixel inside the left field
    out = regularise(proba, guide)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert (out >= 0).all()
    assert out[10, 5].argmax() == 0
    assert (out.argmax(-1) == truth).all()


def test_bad_arguments_are_refused():
    guide, _, noisy = _two_fields(0.1)
    with pytest.raises(InputError, match="radius"):
        guided_filter(noisy, guide, 0, 1e-2)
    with pytest.raises(InputError, match="guide of shape"):
        guided_filter(noisy, guide[:10], 2, 1e-2)
    with pytest.raises(InputError, match="no valid pixel"):
        scale_guide(guide, np.zeros_like(guide, bool))


def test_guide_image_is_scaled_and_follows_the_scene():
    cube, gt = synthetic_scene(32, 32, bands=20, n_classes=3, seed=1)
    guide = guide_image(cube)
    assert guide.shape == (32, 32) and guide.dtype == np.float32
    assert guide.min() >= 0 and guide.max() <= 1
    # pixels of one class are closer in the guide than pixels of different classes
    means = [guide[gt.data == c].mean() for c in (1, 2, 3)]
    within = np.mean([guide[gt.data == c].std() for c in (1, 2, 3)])
    assert np.ptp(means) > within
    np.testing.assert_array_equal(guide, guide_image(cube))  # seeded
