"""The whole workflow through the panel: labels, pretrain, extract, train and predict, paint
more and Update (also live), evaluate, save and apply, inspect. Widgets are driven through
their methods; what they do is the Workspace's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")

from qt_support import paint, paint_strokes, pretrain_tiny, wait_job


def test_whole_workflow(widget, scene, qtbot, tmp_path, monkeypatch, errors):
    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path / "cache"))
    w, viewer, (cube, gt) = widget, widget.viewer, scene

    # labels: three strokes from the ground truth, one per class
    layer = w.data.new_training_labels()
    paint_strokes(layer, gt.data)
    w.data.add_class()
    w.data.remove_last_class()
    assert len(w.session.class_names) == 3

    # pretrain: live loss and ETA, then a one-line summary
    pretrain_tiny(qtbot, w)
    assert w.session.model is not None, errors
    assert len(w.model.loss.values) > 1
    assert "tiny" in w.model.summary.text()
    assert w.model.save_btn.isEnabled()
    model_dir = w.model.save(tmp_path / "model")
    assert model_dir is not None and any(model_dir.iterdir())

    # the tiny U-Net has fewer decoder blocks: stages were trimmed to existing ones
    w.classify.timesteps.setText("100, 400, 700")
    w.classify.method.setCurrentText("paper")  # the fusion heads' Update (warm start)
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
    paint(layer, slice(r, r + 1), slice(c, c + 1), int(gt.data[r, c]))
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
    paint(layer, slice(0, 1), slice(0, 1), int(gt.data[0, 0]))
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


def test_quick_map_first_then_the_mtmsd_map_with_suggestions(widget, scene, qtbot, tmp_path,
                                                             monkeypatch, errors):  # fmt: skip
    """Train before any diffusion model shows the quick map at once (and says so); the MTMSD
    map replaces it by itself when pretraining ends; every map comes with places to paint."""
    from napari_mtmsd._qt._maps import PREDICTION_LAYER, SUGGESTIONS_LAYER

    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path / "cache"))
    w, viewer, (_, gt) = widget, widget.viewer, scene
    layer = w.data.new_training_labels()
    paint_strokes(layer, gt.data)
    assert w.session.model is None and w.classify.train_btn.isEnabled()
    w.classify.train_and_predict()
    wait_job(qtbot, w)
    assert not errors and w.session.ws.prediction.method == "quick"
    assert "quick map" in w.classify.map_info.text()
    assert PREDICTION_LAYER in viewer.layers and SUGGESTIONS_LAYER in viewer.layers
    assert len(viewer.layers[SUGGESTIONS_LAYER].data) > 0
    pretrain_tiny(qtbot, w)  # the model's arrival starts the MTMSD map by itself
    qtbot.waitUntil(lambda: w.session.ws.prediction.method != "quick" and not w.runner.busy,
                    timeout=60_000)  # fmt: skip
    assert not errors and w.session.ws.prediction.method == "few-label"
    assert "few-label" in w.classify.map_info.text()
    assert w.session.bundle.method == "few-label"
    # the timestep attention belongs to the paper's classifier: not offered for this one
    assert not w.inspect.attention_btn.isEnabled() and "paper" in w.inspect.attention_btn.toolTip()
