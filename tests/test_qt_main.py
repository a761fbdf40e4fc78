"""The docked panel as a whole: opened from the manifest, closed mid-job, and what it picks up\nfrom layers opened before it."""

from __future__ import annotations

import pytest

pytest.importorskip("qtpy")

import numpy as np

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
    # the band slider counts bands; the overlay names the wavelength on screen
    cube_layer = w.session.cube_layer()
    wl = w.session.ws.cube.wavelengths
    from napari_mtmsd._qt._layers import text_overlay

    viewer.dims.set_current_step(0, 57)
    assert text_overlay(viewer).visible
    assert text_overlay(viewer).text == f"band 57: {wl[57]:g} nm"
    assert cube_layer.metadata["wavelengths"][57] == pytest.approx(wl[57])


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
