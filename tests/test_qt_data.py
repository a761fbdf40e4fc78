"""The Data and labels section: cube, classes, training labels, a split from ground truth."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")


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


def test_the_workspace_follows_the_chosen_cube(widget):
    w, viewer = widget, widget.viewer
    ws, layer = w.session.ws, w.data.cube_combo.layer()
    first = ws.cube
    assert first is not None and first.shape == (32, 32, 12)
    flipped = np.asarray(layer.data)[:, ::-1].copy()
    layer.data = flipped  # new data in the same layer: the workspace's cube is that data
    assert ws.cube is not first
    np.testing.assert_array_equal(np.asarray(ws.cube.data), np.moveaxis(flipped, 0, -1))
    assert w.data.cube_info.text() == "32 x 32 px, 12 bands, 400-2500 nm"
    viewer.add_image(np.zeros((32, 20, 5), np.float32), name="plain")
    w.data.cube_combo.setCurrentText("plain")
    w.data.band_axis.setCurrentIndex(2)
    assert ws.cube.shape == (32, 20, 5)
