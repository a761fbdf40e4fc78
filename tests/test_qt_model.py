"""The Model section: a Stop mid-pretraining, and errors that change nothing."""

from __future__ import annotations

import time
from itertools import pairwise

import numpy as np
import pytest

pytest.importorskip("qtpy")

from qt_support import pretrain_tiny, wait_job


def test_stop_mid_pretrain_and_errors(widget, scene, qtbot, tmp_path, monkeypatch, errors):
    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path / "cache"))
    w, viewer = widget, widget.viewer
    # Stop: takes effect within a second, leaves no model and re-enables the buttons
    w.model.preset.setCurrentText("tiny")
    w.model.steps.setValue(1_000_000)
    stamps: list[float] = []
    w.runner.progress.connect(lambda record: stamps.append(time.perf_counter()))
    w.model.pretrain()
    qtbot.waitUntil(lambda: len(w.model.loss.values) >= 4, timeout=60_000)
    t0 = time.perf_counter()
    w.stop_btn.click()
    wait_job(qtbot, w)
    # the job stops at its next yield: within one optimisation step (plus Qt's event delivery)
    slowest_step = max(b - a for a, b in pairwise(stamps[1:]))
    assert time.perf_counter() - t0 < slowest_step + 1.0
    assert w.session.model is None and w.model.pretrain_btn.isEnabled()
    assert "stopped" in w.status.text() and not errors

    # error path: a model trained on 12 bands cannot extract a 10-band cube; nothing changes
    pretrain_tiny(qtbot, w, steps=10)
    model = w.session.model
    narrow = viewer.add_image(
        np.random.default_rng(0).random((10, 32, 32), np.float32), name="narrow"
    )
    n_layers = len(viewer.layers)
    w.data.cube_combo.setCurrentText("narrow")
    w.classify.timesteps.setText("100")
    w.classify.extract()
    wait_job(qtbot, w)
    assert errors and "10 bands" in errors[-1] and "12" in errors[-1]
    assert w.session.model is model and len(viewer.layers) == n_layers
    assert w.classify.current_store() is None
    assert narrow.name in w.status.text() or "failed" in w.status.text()

    # no training labels: a clear message, no job
    w.data.cube_combo.setCurrentIndex(0)
    w.classify.train_and_predict()
    assert not w.runner.busy and "training labels" in errors[-1]
