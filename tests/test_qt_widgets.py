"""The docked workflow under Xvfb with a real viewer: data and labels, pretrain (with a stop),
extract, train and predict, paint more and update (also live), evaluate, save and apply, inspect,
an error path, and closing napari mid-job. Widgets are driven through their methods."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import numpy as np
import pytest

pytest.importorskip("qtpy")

from napari_mtmsd._qt import MTMSDWidget
from napari_mtmsd._qt._workers import JobRunner
from napari_mtmsd.errors import Cancelled, DeviceError

JOB_TIMEOUT_MS = 180_000  # generous: the 2 cores are shared with other jobs


@pytest.fixture
def errors(monkeypatch):
    """Every error notification the widgets show, captured instead of displayed."""
    shown: list[str] = []
    for module in ("napari.utils.notifications",):
        monkeypatch.setattr(f"{module}.show_error", lambda text: shown.append(str(text)))
    return shown


@pytest.fixture
def scene():
    from napari_mtmsd.samples import synthetic_scene

    return synthetic_scene(height=32, width=32, bands=12, n_classes=3, noise=0.01, seed=3)


@pytest.fixture
def widget(make_napari_viewer, scene, errors):
    from napari_mtmsd._reader import cube_layers, labels_layer

    viewer = make_napari_viewer()
    cube, gt = scene
    for data, kwargs, kind in [*cube_layers(cube, preview=False), labels_layer(gt)]:
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        layer.scale = (1.0, 2.0, 2.0) if kind == "image" else (2.0, 2.0)
        layer.translate = (0.0, 10.0, -4.0) if kind == "image" else (10.0, -4.0)
    w = MTMSDWidget(viewer)
    viewer.window.add_dock_widget(w, name="MTMSD")
    return w


def wait_job(qtbot, w: MTMSDWidget) -> None:
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=JOB_TIMEOUT_MS)


def _slow(n: int, delay: float = 0.02, fail: BaseException | None = None):
    for i in range(n):
        time.sleep(delay)
        if fail is not None and i == 2:
            raise fail
        yield {"stage": "test", "step": i + 1, "total": n}
    return "result"


# --- plumbing -------------------------------------------------------------------------------


def test_runner_result_stop_and_failures(qtbot, errors):
    runner = JobRunner()
    got, records = [], []
    runner.start("ok", _slow(5), got.append, records.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert got == ["result"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["total"] == 5 and "elapsed" in records[-1]

    # Stop: effective at the next yield, no result delivered, runner free again
    runner.start("long", _slow(10_000), got.append)
    qtbot.waitUntil(lambda: runner.worker is not None and runner.worker.is_running, timeout=5000)
    t0 = time.perf_counter()
    runner.stop()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert time.perf_counter() - t0 < 1.0
    assert got == ["result"]

    # RuntimeError subclasses (torch, DeviceError) must reach the user, not vanish in superqt
    runner.start(
        "device", _slow(5, fail=DeviceError("device 'cuda' is not available")), got.append
    )
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert errors == ["device failed: device 'cuda' is not available"]
    assert isinstance(runner.last_error, DeviceError)

    runner.start("value", _slow(5, fail=ValueError("bad value 3")), got.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert errors[-1] == "value failed: ValueError: bad value 3"

    # a job that cancels itself is a stop, not an error
    runner.start("cancel", _slow(5, fail=Cancelled("user")), got.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert len(errors) == 2 and got == ["result"]


def _thread(n: int):
    for i in range(n):
        time.sleep(0.01)
        yield {"stage": "test", "step": i + 1, "total": n}
    return threading.get_ident()


def test_jobs_share_one_compute_thread(qtbot, errors):
    # one long-lived thread for every section's jobs: one OpenMP team (see compute_pool)
    first, second = JobRunner(), JobRunner()
    threads, messages = [], []
    second.message.connect(messages.append)
    first.start("first", _thread(20), threads.append)
    second.start("second", _thread(3), threads.append)  # queued behind the first, not beside it
    assert messages == ["second: waiting for the running job"]
    qtbot.waitUntil(lambda: not first.busy and not second.busy, timeout=5000)
    first.start("third", _thread(3), threads.append)
    qtbot.waitUntil(lambda: not first.busy, timeout=5000)
    assert len(threads) == 3 and len(set(threads)) == 1
    assert threads[0] != threading.get_ident()  # not the main thread
    assert errors == []


def test_runner_refuses_a_second_job(qtbot, errors):
    runner = JobRunner()
    runner.start("first", _slow(50), lambda r: None)
    second = _slow(5)
    runner.start("second", second, lambda r: None)
    assert second.gi_frame is None  # closed, never started
    runner.stop()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)


# --- data and labels ------------------------------------------------------------------------


def test_data_section(widget, tmp_path, errors):
    w, d, viewer = widget, widget.data, widget.viewer
    assert d.cube_combo.currentText().startswith("synthetic")
    assert d.cube_info.text() == "32 x 32 px, 12 bands, 400-2500 nm"
    assert d.labels_combo.currentText() == "(none)"

    layer = d.new_training_labels()
    assert layer.data.shape == (32, 32) and not layer.data.any()
    assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (10.0, -4.0)
    assert w.session.class_names == ["class 1", "class 2"]

    d.add_class("water")
    d.rename_class(1, "grass")
    d.set_class_color(3, (10, 20, 30))
    assert w.session.class_names == ["grass", "class 2", "water"]
    np.testing.assert_allclose(layer.colormap.color_dict[3][:3], np.array([10, 20, 30]) / 255)
    assert list(layer.features["class_name"]) == ["unlabelled", "grass", "class 2", "water"]
    assert d.table.item(0, 1).text() == "grass"

    layer.data[2:4, 2:5] = 1
    layer.data[10, 10] = 3
    layer.refresh()
    d.refresh_counts()
    assert d.class_counts().tolist() == [6, 0, 1]
    assert d.table.item(0, 2).text() == "6"

    path = d.save_labels(tmp_path / "train.tif")
    assert path is not None and path.exists()
    viewer.layers.remove(layer)
    loaded = d.load_labels(path)
    assert loaded is not None and loaded.name == "training labels"
    np.testing.assert_array_equal(np.asarray(loaded.data)[2:4, 2:5], 1)
    assert w.session.class_names == ["grass", "class 2", "water"]

    assert d.load_labels(tmp_path / "missing.npy") is None
    assert "missing.npy" in errors[-1]


def test_split_from_ground_truth(widget, scene):
    d, gt = widget.data, scene[1].data
    d.gt_combo.setCurrentText(scene[1].name)
    d.split_spec.setText("per-class:4")
    layer = d.split_from_ground_truth()
    counts = d.class_counts()
    assert counts.tolist() == [4, 4, 4]
    train = np.asarray(layer.data)
    assert np.all(train[train > 0] == gt[train > 0])
    assert "12 training" in d.split_info.text()
    d.split_spec.setText("nonsense:1")
    assert d.split_from_ground_truth() is None


# --- the whole workflow ---------------------------------------------------------------------


def _pretrain(qtbot, w: MTMSDWidget, steps: int = 15) -> None:
    w.model.preset.setCurrentText("tiny")
    w.model.device.setCurrentText("cpu")
    w.model.steps.setValue(steps)
    w.model.pretrain()
    assert not w.model.pretrain_btn.isEnabled() and w.stop_btn.isEnabled()
    wait_job(qtbot, w)


def _paint(layer, rows: slice, cols: slice, label: int) -> None:
    data = np.asarray(layer.data).copy()
    data[rows, cols] = label
    layer.data = data
    layer.events.paint(value=[])  # what a brush stroke emits when the mouse is released


def test_whole_workflow(widget, scene, qtbot, tmp_path, monkeypatch, errors):
    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path / "cache"))
    w, viewer, (cube, gt) = widget, widget.viewer, scene

    # labels: three strokes from the ground truth, one per class
    layer = w.data.new_training_labels()
    for k in (1, 2, 3):
        r, c = np.argwhere(gt.data == k)[len(np.argwhere(gt.data == k)) // 2]
        _paint(layer, slice(r, r + 2), slice(c, c + 2), k)
    w.data.add_class()
    w.data.remove_last_class()
    assert len(w.session.class_names) == 3

    # pretrain: live loss and ETA, then a one-line summary
    _pretrain(qtbot, w)
    assert w.session.model is not None, errors
    assert len(w.model.loss.values) > 1
    assert "tiny" in w.model.summary.text()
    assert w.model.save_btn.isEnabled()
    model_dir = w.model.save(tmp_path / "model")
    assert model_dir is not None and any(model_dir.iterdir())

    # the tiny U-Net has fewer decoder blocks: stages were trimmed to existing ones
    w.classify.timesteps.setText("100, 400, 700")
    w.classify.n_models.setValue(2)
    w.classify.epochs.setValue(5)
    w.classify.extract()
    wait_job(qtbot, w)
    assert w.classify.current_store() is not None, errors
    assert w.classify.cache_info.text().startswith("features cached: 32 x 32 px, 3 timesteps")

    w.classify.train_and_predict()
    wait_job(qtbot, w)
    assert not errors
    pred, conf = viewer.layers["prediction"], viewer.layers["confidence"]
    assert pred.data.shape == (32, 32) and set(np.unique(pred.data)) <= {1, 2, 3}
    assert tuple(pred.scale) == (2.0, 2.0) and tuple(pred.translate) == (10.0, -4.0)
    assert tuple(conf.scale) == (2.0, 2.0) and tuple(conf.translate) == (10.0, -4.0)
    assert 0.0 < float(conf.data.min()) and float(conf.data.max()) <= 1.0
    assert list(pred.features["class_name"])[1:] == w.session.class_names
    first = w.session.bundle

    # scores against a ground truth, on pixels that were not training labels
    w.classify.gt_combo.setCurrentText(gt.name)
    report = w.classify.evaluate()
    assert report is not None and 0 <= report["oa"] <= 100
    assert "OA" in w.classify.scores_info.text() and not w.classify.confusion.isHidden()
    n_test = int(((gt.data > 0) & (np.asarray(layer.data) == 0)).sum())
    assert f"on {n_test} test pixels" in w.classify.scores_info.text()

    # paint more where it is wrong, then Update: continues the classifier on cached features
    wrong = np.argwhere((np.asarray(pred.data) != gt.data) & (np.asarray(layer.data) == 0))
    r, c = wrong[0] if len(wrong) else (0, 0)
    _paint(layer, slice(r, r + 1), slice(c, c + 1), int(gt.data[r, c]))
    w.classify.update_epochs.setValue(2)
    w.classify.update_prediction()
    wait_job(qtbot, w)
    assert w.session.bundle is not first and not errors
    assert w.session.bundle.meta["n_train"] == int((np.asarray(layer.data) > 0).sum())
    clf = w.session.bundle.classifier
    assert clf.history_["warm_start"] and max(clf.history_["epochs_run"]) <= 2
    np.testing.assert_array_equal(
        clf.purification_["glob"], first.classifier.purification_["glob"]
    )
    assert w.status.text().startswith("Update: done")

    # a class erased: the classes changed, so Update trains afresh (and says so)
    saved_labels = np.asarray(layer.data).copy()
    layer.data = np.where(saved_labels == 3, 0, saved_labels)
    w.classify.update_prediction()
    wait_job(qtbot, w)
    clf = w.session.bundle.classifier
    assert not clf.history_["warm_start"] and clf.classes_.tolist() == [1, 2], errors
    assert w.status.text().startswith("Update (full training): done")
    layer.data = saved_labels

    # live mode: a stroke triggers an update after the debounce delay
    w.classify.live.setChecked(True)
    before = w.session.bundle
    _paint(layer, slice(0, 1), slice(0, 1), int(gt.data[0, 0]))
    qtbot.waitUntil(lambda: w.session.bundle is not before and not w.runner.busy, timeout=30_000)
    w.classify.live.setChecked(False)

    # save the classifier, load it back, apply it to another open cube
    saved = w.classify.save_classifier(tmp_path / "clf")
    assert saved is not None and (saved / "bundle.json").is_file()
    assert w.classify.load_classifier(saved) is not None
    other = viewer.add_image(np.asarray(cube.data)[::-1].transpose(2, 0, 1).copy(), name="flipped")
    w.classify.apply_to_layer(other)
    wait_job(qtbot, w)
    assert viewer.layers["prediction [flipped]"].data.shape == (32, 32), errors

    # inspect: features with named dims, PCA to RGB per timestep, attention per class
    w.classify.timesteps.setText("100, 400, 700")  # as set before loading the bundle
    w.classify.extract()  # a cache hit: returns at once
    wait_job(qtbot, w)
    feats = w.inspect.show_features()
    assert feats.data.shape[0] == 3 and feats.data.shape[2:] == (32, 32)
    assert tuple(viewer.dims.axis_labels)[-4:-2] == ("timestep", "channel")
    w.inspect.show_pca()
    wait_job(qtbot, w)
    assert viewer.layers["features PCA (RGB)"].data.shape == (3, 32, 32, 3)
    w.inspect.show_attention()
    wait_job(qtbot, w)
    assert not w.inspect.attention.isHidden() and not errors


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
    _pretrain(qtbot, w, steps=10)
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


def test_close_viewer_mid_job(make_napari_viewer, scene, qtbot, errors):
    from napari_mtmsd._reader import cube_layers

    viewer = make_napari_viewer()
    for data, kwargs, _ in cube_layers(scene[0], preview=False):
        viewer.add_image(data, **kwargs)
    w = MTMSDWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.preset.setCurrentText("tiny")
    w.model.steps.setValue(1_000_000)
    w.model.pretrain()
    worker = w.runner.worker
    qtbot.waitUntil(lambda: worker.is_running, timeout=30_000)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=15_000)
    assert not errors


def test_manifest_opens_the_panel(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mtmsd", "MTMSD workflow")
    assert isinstance(widget, MTMSDWidget)
    viewer.add_image(np.zeros((5, 8, 8), np.float32), name="cube")  # napari hands us a proxy
    assert widget.data.cube_combo.currentText() == "cube"
    assert widget.data.cube_info.text() == "8 x 8 px, 5 bands"


def test_plain_array_band_axis_and_spectrum(widget, scene):
    w, viewer, cube = widget, widget.viewer, scene[0]
    hwb = np.asarray(cube.data)[:, :20]  # (32, 20, 12): rows, cols, bands
    viewer.add_image(hwb, name="plain")
    w.data.cube_combo.setCurrentText("plain")
    w.data.band_axis.setCurrentIndex(2)
    assert w.data.cube_info.text() == "32 x 20 px, 12 bands"
    assert w.session.cube().data.shape == (32, 20, 12)

    w.inspect.spectrum_box.setChecked(True)
    assert w.inspect.on_mouse in viewer.mouse_move_callbacks
    viewer.cursor.position = (5, 7, 3)  # (row, col, band) of this layer
    w.inspect.on_mouse(viewer, None)
    np.testing.assert_allclose(w.inspect.spectrum.values, hwb[5, 7])
    w.inspect.spectrum_box.setChecked(False)
    assert w.inspect.on_mouse not in viewer.mouse_move_callbacks
