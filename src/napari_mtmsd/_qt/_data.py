"""Data and labels: the cube, the class table, training labels, a split from ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._common import LayerCombo, Session, is_labels
from ._layers import class_colormap, class_features, is_cube_layer, show_labels

TRAINING_LAYER = "training labels"
LABEL_FILTER = "Label maps (*.hdr *.img *.mat *.tif *.tiff *.npy);;All files (*)"


def _names_from_layer(layer: Any) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and colours a reader left on a Labels layer, if any."""
    meta = layer.metadata or {}
    label_map = meta.get("label_map")
    names = meta.get("class_names", getattr(label_map, "class_names", None))
    colors = meta.get("colors", getattr(label_map, "colors", None))
    return (None if names is None else list(names)), (
        None if colors is None else np.asarray(colors, dtype=np.uint8)
    )


class DataSection(QWidget):
    """Pick the cube, edit classes, make/load/save training labels, split a ground truth."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        viewer = session.viewer
        self.cube_combo = LayerCombo(viewer, is_cube_layer)
        self.band_axis = QComboBox()
        self.band_axis.addItems(["0", "1", "2"])
        self.band_axis.setToolTip(
            "Which axis of the layer holds the bands (the reader puts them first)"
        )
        self.cube_info = QLabel("no cube")
        self.cube_info.setWordWrap(True)
        session.cube_combo = self.cube_combo

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["", "class", "training px"])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(120)
        self.add_btn = QPushButton("Add class")
        self.remove_btn = QPushButton("Remove last")
        self.new_btn = QPushButton("New training labels")
        self.labels_combo = LayerCombo(viewer, is_labels, none_text="(none)")
        session.labels_combo = self.labels_combo
        self.load_btn = QPushButton("Load labels...")
        self.save_btn = QPushButton("Save labels...")

        self.gt_combo = LayerCombo(viewer, is_labels, none_text="(none)")
        self.split_spec = QLineEdit("random:0.1")
        self.split_spec.setToolTip("random:F, per-class:N, blocks:K or mask:TRAIN,TEST (files)")
        self.split_seed = QSpinBox()
        self.split_seed.setRange(0, 2**31 - 1)
        self.split_seed.setValue(827)
        self.split_btn = QPushButton("Training split from ground truth")
        self.split_info = QLabel("")
        self.split_info.setWordWrap(True)

        self._layout()

        self.cube_combo.currentTextChanged.connect(self._cube_changed)
        self.band_axis.currentIndexChanged.connect(self._axis_changed)
        self.add_btn.clicked.connect(lambda: self.add_class())
        self.remove_btn.clicked.connect(self.remove_last_class)
        self.new_btn.clicked.connect(self.new_training_labels)
        self.load_btn.clicked.connect(lambda: self.load_labels())
        self.save_btn.clicked.connect(lambda: self.save_labels())
        self.split_btn.clicked.connect(self.split_from_ground_truth)
        self.table.itemChanged.connect(self._item_changed)
        self.table.cellDoubleClicked.connect(self._cell_double_clicked)
        self.labels_combo.currentTextChanged.connect(self._labels_changed)
        session.ws.events.classes.connect(self._classes_changed)
        self._watched: Any | None = None
        self._cube_layer: Any | None = None
        self._cube_changed()
        self._labels_changed()

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("cube", self.cube_combo)
        form.addRow("band axis", self.band_axis)
        form.addRow(self.cube_info)
        row = QHBoxLayout()
        row.addWidget(self.add_btn)
        row.addWidget(self.remove_btn)
        row.addWidget(self.new_btn)
        files = QHBoxLayout()
        files.addWidget(self.load_btn)
        files.addWidget(self.save_btn)
        split = QFormLayout()
        split.addRow("ground truth", self.gt_combo)
        split.addRow("split", self.split_spec)
        split.addRow("seed", self.split_seed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.table)
        layout.addLayout(row)
        labels_form = QFormLayout()
        labels_form.addRow("training labels", self.labels_combo)
        layout.addLayout(labels_form)
        layout.addLayout(files)
        layout.addLayout(split)
        layout.addWidget(self.split_btn)
        layout.addWidget(self.split_info)

    # cube ----------------------------------------------------------------------------------
    def _cube_changed(self, *_: Any) -> None:
        from ._layers import guess_band_axis

        layer = self.cube_combo.layer()
        if self._cube_layer is not None:
            self._cube_layer.events.data.disconnect(self._cube_data_changed)
        self._cube_layer = layer
        if layer is not None:
            layer.events.data.connect(self._cube_data_changed)
            self.band_axis.blockSignals(True)
            self.band_axis.setCurrentIndex(guess_band_axis(layer))
            self.band_axis.blockSignals(False)
        self.session.band_axis = None if layer is None else self.band_axis.currentIndex()
        self.session.sync_cube()
        self._describe_cube()

    def _cube_data_changed(self, *_: Any) -> None:
        """New data in the cube layer: the reader's cube no longer describes it (its wavelengths
        stay in the metadata), so the workspace gets a new cube and its features go."""
        layer = self._cube_layer
        if layer is not None and "cube" in (layer.metadata or {}):
            layer.metadata = {k: v for k, v in layer.metadata.items() if k != "cube"}
        self.session.sync_cube()
        self._describe_cube()

    def _axis_changed(self, index: int) -> None:
        self.session.band_axis = index
        self.session.sync_cube()
        self._describe_cube()

    def _describe_cube(self) -> None:
        layer = self.cube_combo.layer()
        if layer is None:
            self.cube_info.setText("no cube: open one (File > Open, or File > Open Sample)")
            return
        try:
            cube = self.session.cube()
        except Exception as exc:  # a bad layer is shown, not raised, while browsing
            self.cube_info.setText(str(exc))
            return
        h, w, b = cube.data.shape
        text = f"{h} x {w} px, {b} bands"
        wl = cube.wavelengths
        if wl is not None and len(wl):
            text += (
                f", {float(np.min(wl)):.0f}-{float(np.max(wl)):.0f} {cube.wavelength_units or ''}"
            )
        self.cube_info.setText(text.rstrip())

    # classes -------------------------------------------------------------------------------
    def add_class(self, name: str | None = None) -> None:
        names = [*self.session.class_names, name or f"class {len(self.session.class_names) + 1}"]
        self.session.set_classes(names, self.session.colors)

    def remove_last_class(self) -> None:
        if self.session.class_names:
            self.session.set_classes(self.session.class_names[:-1], self.session.colors[:-1])

    def rename_class(self, label: int, name: str) -> None:
        names = list(self.session.class_names)
        names[label - 1] = name.strip() or names[label - 1]
        self.session.set_classes(names, self.session.colors)

    def set_class_color(self, label: int, rgb: tuple[int, int, int]) -> None:
        colors = self.session.colors.copy()
        colors[label] = rgb
        self.session.set_classes(self.session.class_names, colors)

    def _cell_double_clicked(self, row: int, column: int) -> None:
        if column != 0:
            return
        r, g, b = (int(v) for v in self.session.colors[row + 1])
        color = QColorDialog.getColor(QColor(r, g, b), self, "Class colour")
        if color.isValid():
            self.set_class_color(row + 1, (color.red(), color.green(), color.blue()))

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == 1 and item.text() != self.session.class_names[item.row()]:
            self.rename_class(item.row() + 1, item.text())

    def _classes_changed(self) -> None:
        self.table.blockSignals(True)
        names, colors = self.session.class_names, self.session.colors
        self.table.setRowCount(len(names))
        for i, name in enumerate(names):
            swatch = QTableWidgetItem("  ")
            swatch.setBackground(QColor(*(int(v) for v in colors[i + 1])))
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
            swatch.setToolTip(f"label {i + 1}: double-click to change the colour")
            self.table.setItem(i, 0, swatch)
            self.table.setItem(i, 1, QTableWidgetItem(name))
            count = QTableWidgetItem("0")
            count.setFlags(Qt.ItemFlag.ItemIsEnabled)
            count.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(i, 2, count)
        self.table.blockSignals(False)
        layer = self.labels_combo.layer()
        if layer is not None:
            layer.colormap = class_colormap(colors)
            layer.features = class_features(names)
        self.refresh_counts()

    def class_counts(self) -> np.ndarray:
        """Training pixels per class 1..K in the current training labels."""
        layer = self.labels_combo.layer()
        k = len(self.session.class_names)
        if layer is None:
            return np.zeros(k, dtype=np.int64)
        data = np.asarray(layer.data)
        counts = np.bincount(data[data > 0].ravel().astype(np.int64), minlength=k + 1)
        return counts[1 : k + 1]

    def refresh_counts(self, *_: Any) -> None:
        layer = self.labels_combo.layer()
        if layer is not None:
            top = int(np.max(layer.data)) if np.size(layer.data) else 0
            if top > len(self.session.class_names):
                names = self.session.class_names
                extra = [f"class {i}" for i in range(len(names) + 1, top + 1)]
                self.session.set_classes([*names, *extra], self.session.colors)
                return
        self.table.blockSignals(True)
        for i, n in enumerate(self.class_counts()):
            item = self.table.item(i, 2)
            if item is not None:
                item.setText(str(int(n)))
        self.table.blockSignals(False)

    # training labels -------------------------------------------------------------------------
    def _labels_changed(self, *_: Any) -> None:
        if self._watched is not None:
            for event in (self._watched.events.paint, self._watched.events.data):
                event.disconnect(self.refresh_counts)
        layer = self.labels_combo.layer()
        self._watched = layer
        if layer is not None:
            layer.events.paint.connect(self.refresh_counts)
            layer.events.data.connect(self.refresh_counts)
        self.refresh_counts()

    def _use_labels(self, name: str, data: np.ndarray) -> Any:
        layer = show_labels(
            self.session.viewer,
            name,
            data,
            self.session.class_names,
            self.session.colors,
            self.session.transform(),
        )
        self.labels_combo.select(layer.name)
        self._labels_changed()
        return layer

    def new_training_labels(self) -> Any:
        """An empty Labels layer over the cube, coloured like the class table, ready to paint."""
        from napari_mtmsd.errors import InputError

        try:
            cube = self.session.cube()
        except InputError as exc:
            _error(str(exc))
            return None
        if not self.session.class_names:
            self.session.set_classes(["class 1", "class 2"])
        name, n = TRAINING_LAYER, 1
        while name in self.session.viewer.layers:
            n += 1
            name = f"{TRAINING_LAYER} {n}"
        layer = self._use_labels(name, np.zeros(cube.shape[:2], dtype=np.int32))
        layer.mode = "paint"
        layer.selected_label = 1
        self.session.viewer.layers.selection.active = layer
        return layer

    def load_labels(self, path: str | Path | None = None) -> Any:
        """Read a label map with ``io.read_labels`` into the training labels layer."""
        from napari_mtmsd.io import read_labels

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load training labels", "", LABEL_FILTER)
            if not path:
                return None
        try:
            label_map = read_labels(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot load labels from {path}: {_cause(exc)}")
            return None
        k = int(np.max(label_map.data)) if label_map.data.size else 0
        names = label_map.class_names or self.session.class_names
        if len(names) < k:
            names = [*names, *(f"class {i}" for i in range(len(names) + 1, k + 1))]
        self.session.set_classes(list(names), label_map.colors)
        return self._use_labels(TRAINING_LAYER, np.asarray(label_map.data, dtype=np.int32))

    def save_labels(self, path: str | Path | None = None) -> Path | None:
        """Write the training labels with class names and colours (``io.write_labels``)."""
        from napari_mtmsd.io import write_labels

        layer = self.labels_combo.layer()
        if layer is None:
            _error("no training labels to save")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save training labels", "", LABEL_FILTER)
            if not path:
                return None
        try:
            return write_labels(
                path,
                np.asarray(layer.data),
                class_names=self.session.class_names,
                colors=self.session.colors,
            )
        except Exception as exc:  # shown, with the cause
            _error(f"cannot save labels to {path}: {_cause(exc)}")
            return None

    def split_from_ground_truth(self) -> Any:
        """Training labels = the ground truth on the pixels a split spec picks (seeded)."""
        from napari_mtmsd.splits import make_split

        gt_layer = self.gt_combo.layer()
        if gt_layer is None:
            _error("choose a ground-truth Labels layer first")
            return None
        gt = np.asarray(gt_layer.data).astype(np.int32)
        try:
            train, test = make_split(gt, self.split_spec.text().strip(), self.split_seed.value())
        except Exception as exc:  # shown, with the cause
            _error(f"split {self.split_spec.text()!r}: {_cause(exc)}")
            return None
        names, colors = _names_from_layer(gt_layer)
        k = int(gt.max())
        if names is None:
            names = self.session.class_names if len(self.session.class_names) >= k else None
        if names is None:
            names = [f"class {i}" for i in range(1, k + 1)]
        self.session.set_classes(names, colors if colors is not None else self.session.colors)
        layer = self._use_labels(TRAINING_LAYER, np.where(train, gt, 0).astype(np.int32))
        self.split_info.setText(
            f"{int(train.sum())} training / {int(test.sum())} test pixels "
            f"({self.split_spec.text()}, seed {self.split_seed.value()}); counts in the table"
        )
        return layer


def _cause(exc: BaseException) -> str:
    from ._workers import describe_error

    return describe_error(exc)


def _error(text: str) -> None:
    from napari.utils.notifications import show_error

    show_error(text)
