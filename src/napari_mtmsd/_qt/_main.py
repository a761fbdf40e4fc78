"""The docked MTMSD panel: data and labels, model, classify, inspect, and one job footer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ._common import Session, is_labels
from ._data import DataSection
from ._model import ModelSection

if TYPE_CHECKING:
    import napari


class MTMSDWidget(QWidget):
    """One panel with a section per step; one job runs at a time, shown in the footer.

    Every long step (pretrain, extract, train, predict) runs in a worker thread: the footer's
    bar follows its progress and Stop quits it at its next yield; the buttons that would start
    another job are disabled meanwhile.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ._classify import ClassifySection
        from ._inspect import InspectSection

        self.viewer = viewer
        self.session = Session(viewer, self)
        self.data = DataSection(self.session)
        self.model = ModelSection(self.session)
        self.classify = ClassifySection(self.session)
        self.inspect = InspectSection(self.session)

        body = QWidget()
        body_layout = QVBoxLayout(body)
        self.sections: dict[str, QCollapsible] = {}
        for title, section in (
            ("1. Data and labels", self.data),
            ("2. Model", self.model),
            ("3. Classify", self.classify),
            ("4. Inspect", self.inspect),
        ):
            box = QCollapsible(title)
            box.addWidget(section)
            box.expand(animate=False)
            body_layout.addWidget(box)
            self.sections[title] = box
        body_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        # the dock is narrow: wrap and shrink rather than scroll sideways
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)

        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        footer = QHBoxLayout()
        footer.addWidget(self.bar, 1)
        footer.addWidget(self.stop_btn)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addLayout(footer)
        layout.addWidget(self.status)

        runner = self.session.runner
        runner.progress.connect(self._progress)
        runner.message.connect(self.status.setText)
        runner.busy_changed.connect(self._busy)
        self.stop_btn.clicked.connect(runner.stop)
        # closing napari (or the panel) mid-job stops the job before the widgets go away
        on_mouse, on_step = self.inspect.on_mouse, self.show_band
        self.destroyed.connect(lambda *_: _teardown(runner, viewer, on_mouse, on_step))
        self.adopt_ground_truth()
        viewer.layers.events.inserted.connect(self.adopt_ground_truth)
        viewer.dims.events.current_step.connect(on_step)
        self.show_band()

    def show_band(self, *_: Any) -> None:
        """The wavelength of the band on screen in the viewer's text overlay."""
        from ._layers import band_label, text_overlay

        layer = self.session.cube_layer()
        axis = self.session.current_band_axis() if layer is not None else 0
        text = band_label(layer, axis, self.viewer.dims.point)
        overlay = text_overlay(self.viewer)
        overlay.text, overlay.visible = text, bool(text)

    def adopt_ground_truth(self, *_: Any) -> None:
        """A ground truth already open (a Labels layer a reader or sample named classes for, of
        the cube's size) is chosen for the split and the scores while none is; its classes
        fill an empty class table when they have names of their own."""
        from ._data import _names_from_layer

        if self.data.gt_combo.layer() is not None:
            return
        cube = self.session.ws.cube
        for layer in self.viewer.layers:
            names, colors = _names_from_layer(layer) if is_labels(layer) else (None, None)
            if names is None or (cube is not None and layer.data.shape != cube.shape[:2]):
                continue
            self.data.gt_combo.select(layer.name)
            if self.classify.gt_combo.layer() is None:
                self.classify.gt_combo.select(layer.name)
            generic = [f"class {i}" for i in range(1, len(names) + 1)]
            if not self.session.class_names and names != generic:
                self.session.set_classes(names, colors)
            return

    @property
    def runner(self) -> Any:
        return self.session.runner

    def _busy(self, busy: bool) -> None:
        self.stop_btn.setEnabled(busy)
        if busy:
            self.bar.setRange(0, 0)  # indeterminate until the first record
        else:
            self.bar.setRange(0, 1)
            self.bar.setValue(0)

    def _progress(self, record: dict) -> None:
        if not self.runner.busy:
            return  # a record queued behind the end of its job
        total, step = int(record.get("total", 0)), int(record.get("step", 0))
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(step, total))
        stage = record.get("stage", "working")
        if total and record.get("tiles"):  # a whole-scene extraction: the tile being computed
            text = f"{stage}: tile {int(record['tile']) + 1} of {record['tiles']}"
            text += f", {100 * step / total:.0f} %"
        else:
            text = f"{stage}: {step}/{total}" if total else "working"
        if record.get("eta"):
            text += f" ({record['eta']})"
        self.status.setText(text)


def _teardown(runner: Any, viewer: Any, on_mouse: Any, on_step: Any) -> None:
    """Stop the job and drop the cursor and slider callbacks; touches no (deleted) Qt widget."""
    runner.stop_and_wait()
    if on_mouse in viewer.mouse_move_callbacks:
        viewer.mouse_move_callbacks.remove(on_mouse)
    viewer.dims.events.current_step.disconnect(on_step)
