"""Small Qt pieces shared by the sections: layer pickers, spin boxes from settings, a loss
sparkline, and the session (the panel's link to its Workspace)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QSizePolicy, QSpinBox, QWidget

from ._layers import cube_from_layer, guess_band_axis, spatial_transform
from ._workers import JobRunner

if TYPE_CHECKING:
    import napari

    from napari_mtmsd.io import Cube


def is_labels(layer: Any) -> bool:
    """A 2-D Labels layer: training labels, ground truth or a prediction."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and layer.ndim == 2


def spin_box(config: type, name: str) -> QSpinBox:
    """A spin box for the int field ``name`` of a settings dataclass (``config``): its range,
    default and help come from the field, as the CLI's flags do."""
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(config)}[name]
    box = QSpinBox()
    box.setRange(field.metadata.get("minimum", 0), field.metadata.get("maximum", 2**31 - 1))
    box.setValue(field.default if field.default is not None else 0)
    box.setToolTip(field.metadata.get("help", ""))
    return box


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
    """The panel's link to its :class:`~napari_mtmsd.workspace.Workspace`: the viewer, the job
    runner and the layer pickers. The state (model, classes, classifier, prediction) is the
    workspace's; each section observes its ``events`` and renders, and forwards clicks to it.
    """

    def __init__(self, viewer: napari.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        from napari_mtmsd.workspace import Workspace

        self.viewer = viewer
        self.runner = JobRunner(self)
        self.ws = Workspace()
        self.cube_combo: LayerCombo | None = None
        self.labels_combo: LayerCombo | None = None
        self.band_axis: int | None = None

    # the workspace's state, read by the sections ------------------------------------------
    @property
    def model(self) -> Any | None:
        return self.ws.model

    @property
    def bundle(self) -> Any | None:
        return self.ws.bundle

    @property
    def class_names(self) -> list[str]:
        return self.ws.class_names

    @property
    def colors(self) -> np.ndarray:
        return self.ws.colors

    @property
    def train_labels_used(self) -> np.ndarray | None:
        return self.ws.train_labels_used

    def set_classes(self, names: list[str], colors: np.ndarray | None = None) -> None:
        self.ws.set_classes(names, colors)

    def run(
        self,
        job: Any,
        on_progress: Callable[[dict], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
    ) -> None:
        """Run a workspace ``Job``: its steps in the compute thread, its commit (then
        ``on_done`` with what the commit returns) and its ``on_record`` (partial results) here,
        in the main thread."""
        if job.note:
            from napari.utils.notifications import show_info

            show_info(job.note)

        def commit(result: Any) -> None:
            value = job.commit(result)
            if on_done is not None:
                on_done(value)

        self.runner.start(
            job.name, job.steps, commit, on_progress, on_record=job.on_record, on_stop=job.stopped
        )

    # layers --------------------------------------------------------------------------------
    def cube_layer(self) -> Any | None:
        return None if self.cube_combo is None else self.cube_combo.layer()

    def labels_layer(self) -> Any | None:
        return None if self.labels_combo is None else self.labels_combo.layer()

    def sync_cube(self) -> None:
        """Give the workspace the chosen cube (None when there is none or it is not a cube)."""
        try:
            cube = self.cube()
        except Exception:  # no cube layer, or a bad one: the Data section says why
            cube = None
        self.ws.set_cube(cube)

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
