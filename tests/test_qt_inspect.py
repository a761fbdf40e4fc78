"""The Inspect section's spectrum under the cursor, on a plain array with its bands last."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")


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
