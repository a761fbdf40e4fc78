"""Shared fixtures: a small synthetic cube and a tiny pretrained model (built once a session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_scene():
    from napari_mtmsd.samples import synthetic_scene

    return synthetic_scene(height=40, width=32, bands=30, n_classes=4, seed=1)


@pytest.fixture(scope="session")
def small_cube(small_scene):
    return small_scene[0]


@pytest.fixture(scope="session")
def tiny_model(small_cube):
    from napari_mtmsd.pretrain import pretrain

    return pretrain(small_cube, preset="tiny", steps=30, device="cpu", seed=0)
