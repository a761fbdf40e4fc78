"""Small Qt pieces shared by the sections: layer pickers, a loss sparkline, the session state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QPointF, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

from ._layers import cube_from_layer, guess_band_axis, spatial_transform
from ._workers import JobRunner

if TYPE_CHECKING:
    import napari

    from napari_mtmsd.io import Cube


def default_colors(n_classes: int) -> np.ndarray:
    """(K + 1, 3) uint8, row 0 the background: the palette of the label files the core writes."""
    from napari_mtmsd.io import default_colors as palette

    return palette(n_classes)


def is_labels(layer: Any) -> bool:
    """A 2-D Labels layer: training labels, ground truth or a prediction."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and layer.ndim == 2


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``, in sync with the layer list."""

    def __init__(
        self,
        viewer: napari.Viewer,
        accept: Callable[[Any], bool],
        none_text: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        self._none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(8)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = [layer.name for layer in self._viewer.layers if self._accept(layer)]
        if self._none_text is not None:
            names = [self._none_text, *names]
        if names == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def showPopup(self) -> None:
        self.refresh()  # layers may have been renamed since the last list change
        super().showPopup()

    def layer(self) -> Any | None:
        name = self.currentText()
        if not name or name == self._none_text or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]

    def select(self, name: str) -> None:
        self.refresh()
        self.setCurrentText(name)


class Sparkline(QWidget):
    """A light live plot of a series (the pretraining loss): no matplotlib figure per update."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.title = "loss"
        self.setMinimumHeight(60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, values: list[float]) -> None:
        self.values = list(values)
        self.update()

    def append(self, value: float) -> None:
        self.values.append(float(value))
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(4, 14, -4, -4)
        painter.setPen(QColor(128, 128, 128))
        painter.drawRect(rect)
        values = np.asarray([v for v in self.values if np.isfinite(v)], dtype=float)
        if values.size:
            painter.drawText(6, 11, f"{self.title} {values[-1]:.4g}  (min {values.min():.4g})")
        if values.size < 2:
            painter.end()
            return
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo or 1.0
        xs = np.linspace(rect.left(), rect.right(), values.size)
        ys = rect.bottom() - (values - lo) / span * rect.height()
        painter.setPen(QPen(QColor(80, 170, 255), 1.5))
        painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs, ys, strict=True)]))
        painter.end()


class Session(QObject):
    """What the sections share: the viewer, the job runner, the classes, the model, the classifier.

    Signals tell the other sections when one of them changes, so each section stays a view of
    this state.
    """

    classes_changed = Signal()
    model_changed = Signal()
    bundle_changed = Signal()
    features_changed = Signal()

    def __init__(self, viewer: napari.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.runner = JobRunner(self)
        self.class_names: list[str] = []
        self.colors: np.ndarray = default_colors(0)
        self.model: Any | None = None  # napari_mtmsd.model.DiffusionModel
        self.bundle: Any | None = None  # napari_mtmsd.pipeline.ClassifierBundle
        self.cube_combo: LayerCombo | None = None
        self.labels_combo: LayerCombo | None = None
        self.band_axis: int | None = None
        self.device_combo: QComboBox | None = None
        # the labels the shown classifier was trained on: scores leave these pixels out
        self.train_labels_used: np.ndarray | None = None

    def device(self) -> str:
        """The device chosen in the Model section (only available ones are listed)."""
        return "auto" if self.device_combo is None else self.device_combo.currentText()

    # classes -------------------------------------------------------------------------------
    def set_classes(self, names: list[str], colors: np.ndarray | None = None) -> None:
        names = [str(n) for n in names]
        if colors is None or len(colors) != len(names) + 1:
            fresh = default_colors(len(names))
            if colors is not None:
                keep = min(len(colors), len(fresh))
                fresh[:keep] = np.asarray(colors)[:keep]
            colors = fresh
        self.class_names = names
        self.colors = np.asarray(colors, dtype=np.uint8)
        self.classes_changed.emit()

    # layers --------------------------------------------------------------------------------
    def cube_layer(self) -> Any | None:
        return None if self.cube_combo is None else self.cube_combo.layer()

    def labels_layer(self) -> Any | None:
        return None if self.labels_combo is None else self.labels_combo.layer()

    def current_band_axis(self) -> int:
        layer = self.cube_layer()
        if self.band_axis is not None:
            return self.band_axis
        return 0 if layer is None else guess_band_axis(layer)

    def cube(self, layer: Any | None = None) -> Cube:
        """The chosen cube layer (or ``layer``) as an ``io.Cube``; raises a clear error if none."""
        from napari_mtmsd.errors import InputError

        layer = self.cube_layer() if layer is None else layer
        if layer is None:
            raise InputError("no cube layer chosen: open a cube (File > Open) and pick it")
        axis = self.current_band_axis() if layer is self.cube_layer() else guess_band_axis(layer)
        return cube_from_layer(layer, axis)

    def transform(self, layer: Any | None = None) -> dict[str, tuple]:
        layer = self.cube_layer() if layer is None else layer
        axis = self.current_band_axis() if layer is self.cube_layer() else guess_band_axis(layer)
        return spatial_transform(layer, axis)

    def training_labels(self) -> np.ndarray:
        """The training labels (H, W) as int32; raises naming what is missing or wrong."""
        from napari_mtmsd.errors import InputError

        layer = self.labels_layer()
        if layer is None:
            raise InputError(
                "no training labels: click 'New training labels' and paint, or load a label file"
            )
        data = np.asarray(layer.data)
        cube = self.cube()
        if data.shape != cube.shape[:2]:
            raise InputError(
                f"training labels {layer.name!r} have shape {data.shape}, expected the cube's "
                f"rows x cols {cube.shape[:2]}"
            )
        return data.astype(np.int32, copy=False)
