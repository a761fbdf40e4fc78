"""Helpers of the panel tests: wait for a job, pretrain a tiny model, paint a stroke, the pixels
of the regions a prediction reported finished."""

from __future__ import annotations

from typing import Any

import numpy as np

JOB_TIMEOUT_MS = 180_000  # generous: the 2 cores are shared with other jobs


def wait_job(qtbot, w: Any) -> None:
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=JOB_TIMEOUT_MS)


def pretrain_tiny(qtbot, w: Any, steps: int = 15) -> None:
    w.model.preset.setCurrentText("tiny")
    w.model.device.setCurrentText("cpu")
    w.model.steps.setValue(steps)
    w.model.pretrain()
    assert not w.model.pretrain_btn.isEnabled() and w.stop_btn.isEnabled()
    wait_job(qtbot, w)


def paint(layer, rows: slice, cols: slice, label: int) -> None:
    data = np.asarray(layer.data).copy()
    data[rows, cols] = label
    layer.data = data
    layer.events.paint(value=[])  # what a brush stroke emits when the mouse is released


def paint_strokes(layer, gt: np.ndarray, classes=(1, 2, 3)) -> None:
    """One 2 x 2 stroke per class, at the middle of its ground-truth pixels."""
    for k in classes:
        r, c = np.argwhere(gt == k)[len(np.argwhere(gt == k)) // 2]
        paint(layer, slice(r, r + 2), slice(c, c + 2), k)


def covered(regions: list, shape: tuple) -> np.ndarray:
    """How many of ``regions`` (((r0, r1), (c0, c1)) each) hold each pixel."""
    count = np.zeros(shape[:2], int)
    for (r0, r1), (c0, c1) in regions:
        count[r0:r1, c0:c1] += 1
    return count
