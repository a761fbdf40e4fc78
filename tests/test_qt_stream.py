"""A map being predicted in the panel (issue 13): on screen from its first finished piece and
redrawn as pieces finish (at most a few times a second), kept and said to be partial when
stopped; a full run ends with the map a plain prediction gives. Under Xvfb with a real viewer."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

pytest.importorskip("qtpy")

from qt_support import covered, paint, paint_strokes, wait_job

PIECE = 128  # pixels predicted at once (pipeline.PREDICT_CHUNK): eight pieces of 32 x 32


@pytest.fixture
def fresh_tiny(scene):
    """The tiny preset's network with fresh weights for the panel's scene: made at once, and
    any weights give features to train and predict on."""
    import torch

    from napari_mtmsd.model import DiffusionModel
    from napari_mtmsd.preprocess import Preprocessor
    from napari_mtmsd.schedule import NoiseSchedule
    from napari_mtmsd.unet import PRESETS, UNet

    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    pre = Preprocessor.fit(scene[0], cfg.in_channels, seed=0)
    return DiffusionModel(UNet(cfg), NoiseSchedule("cosine", 1000), pre, {"preset": "tiny"})


class Held:
    """``pipeline.iter_predict`` that waits after each finished piece until the test lets it go
    on (``allow``): what the panel shows at a piece is exactly the pieces done, however busy
    the machine is."""

    def __init__(self, monkeypatch) -> None:
        from napari_mtmsd import pipeline

        self.go = threading.Semaphore(0)
        original = pipeline.iter_predict

        def held(*args, **kwargs):
            gen = original(*args, **kwargs)
            try:
                while True:
                    try:
                        record = next(gen)
                    except StopIteration as stop:
                        return stop.value
                    yield record
                    if "region" in record and not self.go.acquire(timeout=60):
                        raise TimeoutError("the test did not let the prediction go on")
            finally:
                gen.close()

        monkeypatch.setattr(pipeline, "PREDICT_CHUNK", PIECE)
        monkeypatch.setattr(pipeline, "iter_predict", held)

    def allow(self, pieces: int = 1) -> None:
        self.go.release(pieces)

    def hold(self) -> None:
        """No piece goes on until allowed (permits left by a finished job are dropped)."""
        self.go = threading.Semaphore(0)


def test_the_map_grows_on_screen_and_a_stop_keeps_it(
    widget, scene, fresh_tiny, qtbot, tmp_path, monkeypatch, errors
):
    from napari_mtmsd import pipeline
    from napari_mtmsd._qt._maps import PREDICTION_LAYER

    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path / "cache"))
    w, viewer, (_, gt) = widget, widget.viewer, scene
    ws = w.session.ws
    labels = w.data.new_training_labels()
    paint_strokes(labels, gt.data)
    ws.set_model(fresh_tiny)
    w.model.device.setCurrentText("cpu")
    w.classify.method.setCurrentText("paper")
    w.classify.n_models.setValue(1)
    w.classify.epochs.setValue(3)
    said: list[str] = []
    w.runner.progress.connect(lambda *_: said.append(w.status.text()))
    w.classify.extract()
    wait_job(qtbot, w)
    assert any(re.match(r"features: tile \d+ of \d+, \d+ %", text) for text in said), said
    assert w.classify.current_store() is not None, errors
    held = Held(monkeypatch)
    seen: list[tuple] = []  # at each finished piece: region, filled pixels of the layer, busy

    def look(region) -> None:
        seen.append((region, np.asarray(viewer.layers[PREDICTION_LAYER].data) > 0, w.runner.busy))

    def done(pieces: int) -> np.ndarray:
        return covered([r for r, *_ in seen[:pieces]], (32, 32)) > 0

    ws.events.partial_region.connect(look)

    # a full run: the layer is there after the first piece, holding only that piece
    w.classify.train_and_predict()
    qtbot.waitUntil(lambda: len(seen) == 1, timeout=60_000)
    layer = viewer.layers[PREDICTION_LAYER]
    np.testing.assert_array_equal(seen[0][1], done(1))
    assert seen[0][2] and 0 < done(1).mean() < 0.5
    assert np.shares_memory(layer.data, ws.partial.class_map)  # the job's array, not a copy
    assert f"being predicted, {100 * done(1).mean():.0f} %" in w.classify.map_info.text()
    redraws: list[float] = []

    def redrawn(*_) -> None:
        if ws.partial is not None:  # the map fills (the commit then sets the layer anew)
            redraws.append(time.perf_counter())

    layer.events.set_data.connect(redrawn)
    held.allow()  # the second piece: drawn by the next redraw, while the job still runs
    qtbot.waitUntil(lambda: bool(redraws), timeout=10_000)
    np.testing.assert_array_equal(seen[1][1], done(2))
    assert seen[1][2] and w.runner.busy and done(2).mean() < 1
    coloured = layer.thumbnail[..., :3].any(axis=-1)  # 32 x 32 px: one per pixel; 0 is black
    np.testing.assert_array_equal(coloured, done(2))  # redrawn mid-job
    while w.runner.busy:  # the other pieces, 0.1 s apart (one wait after each)
        held.allow()
        qtbot.wait(100)
    assert (covered([r for r, *_ in seen], (32, 32)) == 1).all() and not errors
    assert len(redraws) >= 2 and min(np.diff(redraws)) > 0.15  # throttled: not one per piece
    first = ws.prediction
    held.allow(1000)  # the plain prediction below goes through the held generator too
    plain = pipeline.predict(w.session.bundle, ws.cube, "cpu", store=ws.features, progress=False)
    np.testing.assert_array_equal(np.asarray(layer.data), plain[0])
    np.testing.assert_array_equal(first.class_map, plain[0])
    assert w.classify.map_info.text().startswith("shown: MTMSD map")

    # Update, stopped after its first piece: the pieces done stay on screen, and are said to
    seen.clear()
    held.hold()
    paint(labels, slice(0, 1), slice(0, 1), int(gt.data[0, 0]))
    w.classify.update_prediction()
    qtbot.waitUntil(lambda: len(seen) == 1, timeout=60_000)
    w.stop_btn.click()
    held.allow()  # the piece under way finishes, then the job stops
    wait_job(qtbot, w)
    data = np.asarray(viewer.layers[PREDICTION_LAYER].data)
    assert len(seen) == 2 and not errors
    np.testing.assert_array_equal(data > 0, done(2))
    assert f"stopped: {100 * done(2).mean():.0f} % of the scene predicted" in w.status.text()
    assert f"partial map, {100 * done(2).mean():.0f} %" in w.classify.map_info.text()
    assert ws.prediction is first and ws.partial is not None
