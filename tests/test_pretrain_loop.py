"""The pretraining loop's patch sampling."""

from __future__ import annotations

import numpy as np

from napari_mtmsd._pretrain_loop import dihedral_indices


def test_patch_augmentations_are_the_eight_dihedral_transforms():
    grid = np.arange(100).reshape(10, 10)
    crop = grid[2:6, 3:7]
    expected = [np.rot90(f, k) for f in (crop, crop.T) for k in range(4)]
    got = []
    for aug in range(8):
        r, c = dihedral_indices(np.array([2]), np.array([3]), np.array([aug]), 4)
        got.append(grid[r[0], c[0]])
    for e in expected:
        assert sum(np.array_equal(e, g) for g in got) == 1
