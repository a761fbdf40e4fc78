"""npe2 sample data: Indian Pines (cube, RGB preview, ground truth) and a synthetic scene."""

from __future__ import annotations

from ._reader import cube_layers, labels_layer


def indian_pines() -> list:
    from .samples import load_indian_pines

    cube, labels = load_indian_pines()
    return [*cube_layers(cube), labels_layer(labels)]


def synthetic() -> list:
    """A 128 x 128 x 60 scene with 6 classes (seed 0)."""
    from .samples import synthetic_scene

    cube, labels = synthetic_scene(height=128, width=128, bands=60, n_classes=6, seed=0)
    return [*cube_layers(cube), labels_layer(labels)]
