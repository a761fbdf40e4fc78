"""Classify: the feature spec and classifier settings, Extract, Train & predict, Update (live),
Save / Load, Apply to another cube, scores. What each does is the Workspace's; this section shows
its state and forwards the clicks; the maps are drawn by ``_maps.MapLayers``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_mtmsd._text import format_ints, parse_ints

from ._common import LayerCombo, Session, is_labels, spin_box
from ._layers import is_cube_layer
from ._maps import MapLayers

LIVE_DELAY_MS = 700  # after the last paint stroke; strokes in between restart the wait


class ClassifySection(QWidget):
    """Feature spec, Extract, Train & predict, Update (live), Save, Apply, scores."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_mtmsd.config import FEATURE_FIELDS, ClassifierConfig
        from napari_mtmsd.features import FeatureSpec

        self.session = session
        self.ws = ws = session.ws
        viewer = session.viewer
        self.timesteps = QLineEdit(format_ints(ws.spec.timesteps))
        self.timesteps.setToolTip(FEATURE_FIELDS["timesteps"])
        self.stages = QLineEdit(format_ints(ws.spec.stages))
        self.stages.setToolTip(FEATURE_FIELDS["stages"])
        self.noise_draws = spin_box(FeatureSpec, "noise_draws")
        self.noise_draws.setRange(1, 16)
        self.noise_draws.setToolTip(FEATURE_FIELDS["noise_draws"])
        method = {f.name: f for f in dataclasses.fields(ClassifierConfig)}["method"]
        self.method = QComboBox()
        self.method.addItems(list(method.metadata["choices"]))
        self.method.setCurrentText(method.default)
        self.method.setToolTip(method.metadata["help"])
        self.n_models = spin_box(ClassifierConfig, "n_models")
        self.epochs = spin_box(ClassifierConfig, "epochs")
        self.update_epochs = spin_box(ClassifierConfig, "update_epochs")
        self.extract_btn = QPushButton("Extract features")
        self.train_btn = QPushButton("Train && predict")
        self.update_btn = QPushButton("Update")
        self.update_btn.setToolTip(
            "continue training the current classifier on the current labels (cached features); "
            "a full training when the classes or the features changed"
        )
        self.live = QCheckBox("live update")
        self.live.setToolTip("update by itself shortly after each paint stroke")
        self.cache_info = QLabel("features: not extracted")
        self.cache_info.setWordWrap(True)
        self.map_info = QLabel("")
        self.map_info.setWordWrap(True)
        self.maps = MapLayers(session, self.map_info, self)
        self.save_btn = QPushButton("Save classifier...")
        self.load_btn = QPushButton("Load classifier...")
        self.apply_combo = LayerCombo(viewer, is_cube_layer)
        self.apply_btn = QPushButton("Apply to cube")
        self.gt_combo = LayerCombo(viewer, is_labels, none_text="(none)")
        self.scores_info = QLabel("")
        self.scores_info.setWordWrap(True)
        from ._plots import PlotCanvas

        self.confusion = PlotCanvas(height=2.6)
        self.confusion.setVisible(False)
        self._layout()

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_fire)
        self._painted: Any | None = None
        self._live_pending = False  # a stroke came while a job ran: update when it ends
        self._connect()
        self._busy(False)

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("timesteps", self.timesteps)
        form.addRow("stages", self.stages)
        form.addRow("noise draws", self.noise_draws)
        form.addRow("method", self.method)
        form.addRow("ensemble", self.n_models)
        form.addRow("epochs", self.epochs)
        form.addRow("update epochs", self.update_epochs)
        grid = QGridLayout()
        for i, widget in enumerate(
            (self.extract_btn, self.train_btn, self.update_btn, self.live, self.save_btn,
             self.load_btn, self.apply_combo, self.apply_btn)
        ):  # fmt: skip
            grid.addWidget(widget, i // 2, i % 2)
        gt_form = QFormLayout()
        gt_form.addRow("ground truth", self.gt_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.cache_info)
        layout.addLayout(grid)
        layout.addWidget(self.map_info)
        layout.addLayout(gt_form)
        layout.addWidget(self.scores_info)
        layout.addWidget(self.confusion)

    def _connect(self) -> None:
        self.extract_btn.clicked.connect(self.extract)
        self.train_btn.clicked.connect(self.train_and_predict)
        self.update_btn.clicked.connect(self.update_prediction)
        self.save_btn.clicked.connect(lambda: self.save_classifier())
        self.load_btn.clicked.connect(lambda: self.load_classifier())
        self.apply_btn.clicked.connect(self.apply_to_layer)
        self.gt_combo.currentTextChanged.connect(lambda *_: self.evaluate())
        self.live.toggled.connect(self._watch_labels)
        self.timesteps.textChanged.connect(self._spec_edited)
        self.stages.textChanged.connect(self._spec_edited)
        self.noise_draws.valueChanged.connect(self._spec_edited)
        events = self.ws.events
        events.spec.connect(self._show_spec)
        events.features.connect(self._show_cache)
        events.model.connect(self._busy_refresh)
        events.model.connect(self._replace_quick_map)
        events.classifier.connect(self._busy_refresh)
        events.prediction.connect(self._show_workspace_prediction)
        events.partial.connect(self._clear_scores)
        self.session.runner.busy_changed.connect(self._busy)
        self.session.runner.busy_changed.connect(self._after_job)
        if self.session.labels_combo is not None:
            self.session.labels_combo.currentTextChanged.connect(lambda *_: self._watch_labels())

    # state: the form <-> the workspace ---------------------------------------------------------
    def spec(self) -> Any:
        """The feature spec of the form (the workspace's, with the fields shown here)."""
        return dataclasses.replace(
            self.ws.spec,
            timesteps=parse_ints(self.timesteps.text(), "timesteps"),
            stages=parse_ints(self.stages.text(), "stages"),
            noise_draws=self.noise_draws.value(),
        )

    def _spec_edited(self, *_: Any) -> None:
        """An edit that parses becomes the workspace's spec; one that does not leaves it."""
        try:
            self.ws.set_spec(self.spec())
        except Exception:  # half typed: said when a job needs it
            self._show_cache()

    def _show_spec(self) -> None:
        spec = self.ws.spec
        for edit, values in ((self.timesteps, spec.timesteps), (self.stages, spec.stages)):
            try:
                same = parse_ints(edit.text(), "") == values
            except Exception:  # unparsable text: replace it
                same = False
            if not same:
                edit.blockSignals(True)
                edit.setText(format_ints(values))
                edit.blockSignals(False)
        self.noise_draws.blockSignals(True)
        self.noise_draws.setValue(spec.noise_draws)
        self.noise_draws.blockSignals(False)

    def _sync(self) -> None:
        """The form into the workspace before a job; raises naming a bad value."""
        self.ws.set_spec(self.spec())
        self.ws.classifier_config = dataclasses.replace(
            self.ws.classifier_config,
            method=self.method.currentText(),
            n_models=self.n_models.value(),
            epochs=self.epochs.value(),
            update_epochs=self.update_epochs.value(),
        )

    def current_store(self) -> Any | None:
        """The cached features, if they belong to the current model, cube and spec."""
        try:
            if self.spec() != self.ws.spec:
                return None
        except Exception:  # the form does not parse: its features are not extracted
            return None
        return self.ws.features

    def _show_cache(self) -> None:
        store = self.current_store()
        if store is None:
            self.cache_info.setText("features: not extracted for this model, cube and spec")
            return
        h, w, t, d = store.shape
        self.cache_info.setText(
            f"features cached: {h} x {w} px, {t} timesteps x {d} channels, "
            f"{store.nbytes / 2**20:.0f} MB in {store.path}"
        )

    def _busy(self, busy: bool) -> None:
        has_model = self.session.model is not None
        has_bundle = self.session.bundle is not None
        has_cube = has_model or self.ws.cube is not None  # no model: Train makes the quick map
        self.extract_btn.setEnabled(not busy and has_model)
        self.train_btn.setEnabled(not busy and has_cube)
        self.update_btn.setEnabled(not busy and has_cube)
        self.load_btn.setEnabled(not busy)
        self.save_btn.setEnabled(not busy and has_bundle)
        self.apply_btn.setEnabled(not busy and has_bundle)

    def _busy_refresh(self) -> None:
        self._busy(self.session.runner.busy)
        self._show_cache()

    # jobs ----------------------------------------------------------------------------------
    def _start(self, make_job: Any, labels: bool = False) -> None:
        """Sync the form (and the training labels), make the workspace's job and run it; a
        missing or bad input is shown, and no job starts."""
        from ._data import _cause, _error

        try:
            self._sync()
            if labels:
                self.ws.set_labels(self.session.training_labels())
            job = make_job()
        except Exception as exc:  # no model, labels, a bad spec: say which
            _error(_cause(exc))
            return
        self.session.run(job)

    def extract(self) -> None:
        """Whole-scene features into the on-disk cache (a cache hit returns at once)."""
        self._start(self.ws.extract_job)

    def train_and_predict(self) -> None:
        """Train on the current training labels, then predict the whole cube (one job)."""
        self._start(self.ws.train_job, labels=True)

    def update_prediction(self) -> None:
        """The workspace's Update: continue the classifier on the current labels (cached
        features) and show the new prediction; a full training when it cannot continue."""
        from ._data import _error

        if self.ws.model is not None and self.current_store() is None:
            _error("no cached features for this model, cube and spec: click 'Extract features'")
            return
        self._start(self.ws.update_job, labels=True)

    def _replace_quick_map(self) -> None:
        """A model has come: the quick map on screen gives way to the MTMSD map."""
        shown = self.ws.prediction
        if shown is not None and shown.method == "quick" and self.ws.model is not None:
            if self.session.runner.busy:
                QTimer.singleShot(200, self._replace_quick_map)  # after the pretraining job
            else:
                self.train_and_predict()

    def _show_workspace_prediction(self) -> None:
        if self.maps.show_workspace_prediction():
            self.evaluate()

    def show_prediction(
        self,
        class_map: np.ndarray,
        confidence: np.ndarray,
        layer: Any | None = None,
        suffix: str = "",
    ) -> None:
        """The class map as a Labels layer (class colours and names) and the confidence image."""
        self.maps.show(class_map, confidence, layer, suffix)
        if not suffix:
            self.evaluate()

    def _clear_scores(self, partial: Any) -> None:
        """A new map of the workspace's cube is being predicted: the scores were of the last."""
        if partial is self.ws.partial:
            self.scores_info.setText("")
            self.confusion.setVisible(False)

    # live mode ------------------------------------------------------------------------------
    def _watch_labels(self, *_: Any) -> None:
        if self._painted is not None:
            self._painted.events.paint.disconnect(self._stroke)
            self._painted = None
        layer = self.session.labels_layer()
        if self.live.isChecked() and layer is not None:
            layer.events.paint.connect(self._stroke)
            self._painted = layer

    def _stroke(self, *_: Any) -> None:
        self._live_timer.start()

    def _live_fire(self) -> None:
        if not self.live.isChecked():
            return
        if self.session.runner.busy:
            self._live_pending = True
            return
        if self.current_store() is not None:
            self.update_prediction()

    def _after_job(self, busy: bool) -> None:
        if not busy and self._live_pending:
            self._live_pending = False
            self._live_timer.start()

    # files and other cubes -----------------------------------------------------------------
    def save_classifier(self, path: str | Path | None = None) -> Path | None:
        from ._data import _cause, _error

        if self.session.bundle is None:
            _error("no classifier to save: train one first")
            return None
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Save classifier into folder")
            if not path:
                return None
        try:
            return self.ws.save_classifier(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot save the classifier to {path}: {_cause(exc)}")
            return None

    def load_classifier(self, path: str | Path | None = None) -> Any:
        """Load a saved classifier; its diffusion model becomes the current model."""
        from ._data import _cause, _error

        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Load classifier folder")
            if not path:
                return None
        try:
            return self.ws.load_classifier(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot load a classifier from {path}: {_cause(exc)}")
            return None

    def apply_to_layer(self, layer: Any | None = None) -> None:
        """Predict another open cube with the current classifier (features cached for it too)."""
        from ._data import _cause, _error

        layer = self.apply_combo.layer() if layer is None else layer
        if self.session.bundle is None or layer is None:
            _error("train or load a classifier, and choose the cube to apply it to")
            return
        try:
            job = self.ws.predict_job(self.session.cube(layer))
        except Exception as exc:  # not a cube
            _error(_cause(exc))
            return
        job.name = f"Apply to {layer.name}"
        suffix = f" [{layer.name}]"
        if not self.session.runner.busy:
            self.maps.expect(job.partial, layer, suffix)
        self.session.run(
            job,
            on_done=lambda p: self.show_prediction(
                p.class_map, p.confidence, layer=layer, suffix=suffix
            ),
        )

    # scores --------------------------------------------------------------------------------
    def evaluate(self) -> dict | None:
        """OA / AA / kappa and the confusion matrix of the prediction against the ground truth,
        on the workspace's test set (ground truth minus the classifier's training labels).

        A failure is shown, never raised: the prediction layers are already in place.
        """
        from napari_mtmsd.errors import InputError

        from ._data import _cause, _error

        gt_layer = self.gt_combo.layer()
        self.confusion.setVisible(False)
        if gt_layer is None or self.ws.prediction is None:
            self.scores_info.setText("")
            return None
        try:
            report = self.ws.scores(np.asarray(gt_layer.data))
        except InputError as exc:  # no test pixels, other shape: said in place
            self.scores_info.setText(f"{gt_layer.name!r}: {exc}")
            return None
        except Exception as exc:  # shown, with the cause
            self.scores_info.setText("")
            _error(f"cannot score the prediction: {_cause(exc)}")
            return None
        n_test = int(self.ws.test_mask(np.asarray(gt_layer.data)).sum())
        self.scores_info.setText(
            f"OA {report['oa']:.2f}   AA {report['aa']:.2f}   kappa {report['kappa']:.2f}   "
            f"on {n_test} test pixels (ground truth minus training labels)"
        )
        self._plot_confusion(report)
        self.last_scores = report
        return report

    def _plot_confusion(self, report: dict) -> None:
        from napari_mtmsd.metrics import draw_confusion

        fig = self.confusion.figure
        fig.clear()
        labels = [str(v) for v in report["labels"]]
        matrix, title = report["confusion_matrix"], "confusion (row-normalised)"
        draw_confusion(fig.add_subplot(111), matrix, labels, title=title, fontsize=6)
        fig.tight_layout()
        self.confusion.setVisible(True)
        self.confusion.draw_idle()

