"""Guided filter and probability regularisation (spatial.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd.errors import InputError
from napari_mtmsd.samples import synthetic_scene
from napari_mtmsd.spatial import (
    RW_REACH,
    box_mean,
    guide_image,
    guided_filter,
    random_walker,
    regularise,
    scale_guide,
)


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


def _leaning(truth: np.ndarray, wrong: tuple[slice, slice], lean: float = 0.1) -> np.ndarray:
    """Two-class probabilities following ``truth``, but leaning to the wrong class in ``wrong``."""
    p1 = np.where(truth > 0.5, 0.9, 0.1).astype(np.float32)
    p1[wrong] = np.where(truth[wrong] > 0.5, 0.5 - lean, 0.5 + lean)
    return np.stack([1 - p1, p1], axis=-1)


def test_random_walker_without_seeds_fixes_isolated_errors_and_keeps_the_edge():
    guide, truth, _ = _two_fields(0.0)
    proba = np.stack([1 - truth, truth], axis=-1) * 0.8 + 0.1
    proba[10, 5] = [0.2, 0.8]  # one wrong pixel inside the left field
    out = random_walker(proba, guide)
    assert out.dtype == np.float32 and out.shape == proba.shape
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert (out.argmax(-1) == truth).all()
    assert out[:, 19, 0].min() > 0.8 and out[:, 20, 1].min() > 0.8  # no blur across the edge


def test_a_painted_pixel_pulls_its_field_and_not_the_next():
    """The left field leans to the wrong class; one painted pixel in it is enough to turn it,
    while the right field, across the guide's edge, keeps its own class."""
    guide, truth, _ = _two_fields(0.0)
    proba = _leaning(truth, (slice(None), slice(0, 20)))
    assert (proba[:, :20].argmax(-1) == 1).all()  # wrong before
    seeds = np.full(truth.shape, -1)
    seeds[20, 10] = 0
    out = random_walker(proba, guide, seeds)
    assert (out.argmax(-1) == truth).all()
    assert out[20, 10, 0] == 1.0  # a painted pixel holds its class
    # without the edge, the painted pixel's pull would spill into the right field
    flat = random_walker(proba, np.zeros_like(guide), seeds)
    assert flat[:, 20:, 1].mean() < out[:, 20:, 1].mean()


def test_invalid_pixels_cut_the_walk():
    """A line of no-data pixels splits a uniform field: a painted pixel on one side does not
    reach the other."""
    guide = np.zeros((30, 30), np.float32)
    truth = np.zeros((30, 30), np.float32)
    proba = _leaning(truth, (slice(None), slice(None)))
    valid = np.ones((30, 30), bool)
    valid[:, 15] = False
    seeds = np.full((30, 30), -1)
    seeds[15, 5] = 0
    out = random_walker(proba, guide, seeds, valid)
    assert (out[:, :15].argmax(-1) == 0).all() and (out[:, 16:].argmax(-1) == 1).all()
    joined = random_walker(proba, guide, seeds)
    assert (joined[:, 16:].argmax(-1) == 0).all()


def test_a_window_with_its_reach_gives_the_whole_scene_map():
    """Blocks of a patchwork scene, each solved with ``RW_REACH`` pixels of context, give the
    whole scene's classes and its probabilities to a hundredth."""
    rng = np.random.default_rng(4)
    fields = rng.integers(0, 3, (10, 10)).repeat(16, 0).repeat(16, 1)  # 160 x 160
    guide = (fields / 2.0 + rng.normal(0, 0.02, fields.shape)).astype(np.float32)
    proba = np.eye(3)[fields] * 0.4 + rng.dirichlet(np.ones(3), fields.shape) * 0.6
    seeds = np.full(fields.shape, -1)
    seeds[::23, ::29] = fields[::23, ::29]
    whole = random_walker(proba, guide, seeds)
    core = (slice(48, 112), slice(48, 112))
    win = tuple(slice(s.start - RW_REACH, s.stop + RW_REACH) for s in core)
    part = random_walker(proba[win], guide[win], seeds[win])
    inner = (slice(RW_REACH, -RW_REACH),) * 2
    np.testing.assert_array_equal(part[inner].argmax(-1), whole[core].argmax(-1))
    assert np.abs(part[inner] - whole[core]).max() < 0.01


def test_random_walker_refuses_bad_arguments():
    guide, truth, _ = _two_fields(0.0)
    proba = np.stack([1 - truth, truth], axis=-1)
    with pytest.raises(InputError, match="guide of shape"):
        random_walker(proba, guide[:10])
    with pytest.raises(InputError, match="gamma"):
        random_walker(proba, guide, gamma=0.0)
