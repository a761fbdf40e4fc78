"""The docked panel as a whole: what it picks up from layers opened before it."""

from __future__ import annotations

import pytest

pytest.importorskip("qtpy")

from napari_mtmsd._qt import MTMSDWidget


def test_docked_after_the_indian_pines_sample(make_napari_viewer):
    from napari_mtmsd.samples import INDIAN_PINES_CLASSES

    viewer = make_napari_viewer()
    viewer.open_sample("napari-mtmsd", "indian_pines")
    w = MTMSDWidget(viewer)
    gt_name = next(layer.name for layer in viewer.layers if "ground truth" in layer.name)
    assert w.session.ws.cube is not None and w.session.ws.cube.shape == (145, 145, 200)
    assert w.data.gt_combo.currentText() == gt_name
    assert w.classify.gt_combo.currentText() == gt_name
    assert w.session.class_names == list(INDIAN_PINES_CLASSES)
    assert w.data.table.rowCount() == 16
    assert w.data.table.item(0, 1).text() == INDIAN_PINES_CLASSES[0]
