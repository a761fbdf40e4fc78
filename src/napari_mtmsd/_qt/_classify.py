"""Classify: extract features into the cache, train, predict, update from new labels, evaluate."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import LayerCombo, Session, is_labels
from ._layers import is_cube_layer, show_image, show_labels

PREDICTION_LAYER = "prediction"
CONFIDENCE_LAYER = "confidence"
LIVE_DELAY_MS = 700  # after the last paint stroke; strokes in between restart the wait
UPDATE_EPOCHS = 5  # an Update continues from the current classifier (docs/user_guide.md)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"50:950:50"`` (inclusive range) or ``"0, 1, 2"`` -> a tuple of ints."""
    from napari_mtmsd.errors import InputError

    text = text.strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            start, stop, step = (*parts, 1) if len(parts) == 2 else parts
            if step <= 0:
                raise ValueError
            values = tuple(range(start, stop + 1, step))
        else:
            values = tuple(int(p) for p in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if not values:
        raise InputError(
            f"{what} {text!r}: expected integers like '0, 1, 2' or a range 'start:stop:step'"
        )
    return values


def format_ints(values: tuple[int, ...]) -> str:
    """The shortest of the forms ``parse_ints`` reads."""
    if len(values) > 5:
        step = values[1] - values[0]
        if step > 0 and all(b - a == step for a, b in pairwise(values)):
            return f"{values[0]}:{values[-1]}:{step}"
    return ", ".join(str(v) for v in values)


class ClassifySection(QWidget):
    """Feature spec, Extract, Train & predict, Update (live), Save, Apply, scores."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_mtmsd.features import DEFAULT_STAGES, DEFAULT_TIMESTEPS, FeatureSpec

        self.session = session
        viewer = session.viewer
        self.store: Any | None = None  # cache.FeatureStore of the current model, cube and spec
        self._store_key: tuple | None = None
        self._reuse: dict = {}  # what predictions from self.store share (pipeline.iter_predict)
        self.timesteps = QLineEdit(format_ints(DEFAULT_TIMESTEPS))
        self.timesteps.setToolTip("diffusion timesteps, e.g. 50:950:50 (paper) or 100, 300, 500")
        self.stages = QLineEdit(format_ints(DEFAULT_STAGES))
        self.stages.setToolTip("decoder blocks of the U-Net to read (paper: 0, 1, 2, 3, 5)")
        self.noise_draws = QSpinBox()
        self.noise_draws.setRange(1, 16)
        self.noise_draws.setValue(FeatureSpec().noise_draws)
        self.noise_draws.setToolTip(
            "noise fields whose features are averaged (paper: 1); each costs one more U-Net pass"
        )
        self.n_models = QSpinBox()
        self.n_models.setRange(1, 20)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.epochs.setToolTip("epochs of a full training (Train & predict)")
        self._classifier_defaults()
        self.update_epochs = QSpinBox()
        self.update_epochs.setRange(1, 10_000)
        self.update_epochs.setValue(UPDATE_EPOCHS)
        self.update_epochs.setToolTip(
            "epochs of an Update: it continues from the current classifier (same classes and "
            "features), so a few are enough; otherwise it trains afresh with 'epochs'"
        )
        self.extract_btn = QPushButton("Extract features")
        self.train_btn = QPushButton("Train && predict")
        self.update_btn = QPushButton("Update")
        self.update_btn.setToolTip(
            "continue training the current classifier on the current labels (cached features)"
        )
        self.live = QCheckBox("live update")
        self.live.setToolTip("update by itself shortly after each paint stroke")
        self.cache_info = QLabel("features: not extracted")
        self.cache_info.setWordWrap(True)
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

        form = QFormLayout()
        form.addRow("timesteps", self.timesteps)
        form.addRow("stages", self.stages)
        form.addRow("noise draws", self.noise_draws)
        form.addRow("ensemble", self.n_models)
        form.addRow("epochs", self.epochs)
        form.addRow("update epochs", self.update_epochs)
        grid = QGridLayout()
        grid.addWidget(self.extract_btn, 0, 0)
        grid.addWidget(self.train_btn, 0, 1)
        grid.addWidget(self.update_btn, 1, 0)
        grid.addWidget(self.live, 1, 1)
        grid.addWidget(self.save_btn, 2, 0)
        grid.addWidget(self.load_btn, 2, 1)
        grid.addWidget(self.apply_combo, 3, 0)
        grid.addWidget(self.apply_btn, 3, 1)
        gt_form = QFormLayout()
        gt_form.addRow("ground truth", self.gt_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.cache_info)
        layout.addLayout(grid)
        layout.addLayout(gt_form)
        layout.addWidget(self.scores_info)
        layout.addWidget(self.confusion)

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_fire)
        self._painted: Any | None = None
        self._live_pending = False  # a stroke came while a job ran: update when it ends

        self.extract_btn.clicked.connect(self.extract)
        self.train_btn.clicked.connect(self.train_and_predict)
        self.update_btn.clicked.connect(self.update_prediction)
        self.save_btn.clicked.connect(lambda: self.save_classifier())
        self.load_btn.clicked.connect(lambda: self.load_classifier())
        self.apply_btn.clicked.connect(self.apply_to_layer)
        self.gt_combo.currentTextChanged.connect(lambda *_: self.evaluate())
        self.live.toggled.connect(self._watch_labels)
        self.timesteps.textChanged.connect(self._inputs_changed)
        self.stages.textChanged.connect(self._inputs_changed)
        self.noise_draws.valueChanged.connect(self._inputs_changed)
        if session.cube_combo is not None:
            session.cube_combo.currentTextChanged.connect(self._inputs_changed)
        session.model_changed.connect(self._model_changed)
        session.bundle_changed.connect(self._busy_refresh)
        session.runner.busy_changed.connect(self._busy)
        session.runner.busy_changed.connect(self._after_job)
        if session.labels_combo is not None:
            session.labels_combo.currentTextChanged.connect(lambda *_: self._watch_labels())
        self._busy(False)

    # state ---------------------------------------------------------------------------------
    def _classifier_defaults(self) -> None:
        """Show the classifier's own defaults (the paper's: 5 models, 100 epochs)."""
        import inspect

        from napari_mtmsd.classifier import MTMSDClassifier

        params = inspect.signature(MTMSDClassifier).parameters
        self.n_models.setValue(int(params["n_models"].default))
        self.epochs.setValue(int(params["epochs"].default))

    def spec(self) -> Any:
        from napari_mtmsd.features import FeatureSpec

        return FeatureSpec(
            timesteps=parse_ints(self.timesteps.text(), "timesteps"),
            stages=parse_ints(self.stages.text(), "stages"),
            noise_draws=self.noise_draws.value(),
        )

    def classifier_kwargs(self) -> dict[str, int]:
        return {"n_models": self.n_models.value(), "epochs": self.epochs.value()}

    def _device(self) -> str:
        return self.session.device()

    def _set_store(self, store: Any | None, key: tuple | None, reuse: dict | None = None) -> None:
        """The features now cached; ``reuse`` is what a job kept for them (pipeline.iter_predict)."""
        if reuse is not None:
            self._reuse = reuse
        elif store is not self.store:
            self._reuse = {}  # what was kept for the old store goes with it
        self.store, self._store_key = store, key

    def _model_changed(self) -> None:
        """A new model: keep stages that exist in it, forget features of the old one."""
        model = self.session.model
        self._set_store(None, None)
        self.session.features_changed.emit()
        if model is not None:
            n_blocks = len(model.unet.output_blocks)
            try:
                stages = parse_ints(self.stages.text(), "stages")
            except Exception:  # unparsable text: fall back to all that exist
                stages = ()
            kept = tuple(s for s in stages if s < n_blocks) or tuple(range(min(n_blocks, 4)))
            self.stages.setText(format_ints(kept))
        self._show_cache()
        self._busy(self.session.runner.busy)

    def _inputs_key(self) -> tuple:
        layer = self.session.cube_layer()
        return (
            id(self.session.model),
            None if layer is None else id(layer.data),
            self.session.current_band_axis(),
            self.timesteps.text(),
            self.stages.text(),
            self.noise_draws.value(),
        )

    def current_store(self) -> Any | None:
        """The cached features, if they belong to the current model, cube and spec."""
        return self.store if self._store_key == self._inputs_key() else None

    def _inputs_changed(self, *_: Any) -> None:
        """Other model, cube or spec: the cached features shown may no longer apply."""
        self._show_cache()
        self.session.features_changed.emit()

    def _show_cache(self) -> None:
        store = self.current_store()
        if store is None:
            self.cache_info.setText("features: not extracted for this model, cube and spec")
            return
        h, w, t, d = store.centre.shape
        self.cache_info.setText(
            f"features cached: {h} x {w} px, {t} timesteps x {d} channels, "
            f"{store.nbytes / 2**20:.0f} MB in {store.path}"
        )

    def _busy(self, busy: bool) -> None:
        has_model = self.session.model is not None
        has_bundle = self.session.bundle is not None
        self.extract_btn.setEnabled(not busy and has_model)
        self.train_btn.setEnabled(not busy and has_model)
        self.update_btn.setEnabled(not busy and has_model)
        self.load_btn.setEnabled(not busy)
        self.save_btn.setEnabled(not busy and has_bundle)
        self.apply_btn.setEnabled(not busy and has_bundle)

    def _busy_refresh(self) -> None:
        self._busy(self.session.runner.busy)

    # jobs ----------------------------------------------------------------------------------
    def _prepare(self) -> tuple[Any, Any, Any] | None:
        """Model, cube and spec, or None after telling the user what is missing."""
        from ._data import _cause, _error

        model = self.session.model
        if model is None:
            _error("no diffusion model: pretrain or load one in the Model section")
            return None
        try:
            cube, spec = self.session.cube(), self.spec()
            spec.validate(model)
        except Exception as exc:  # bad cube, timesteps or stages: say which
            _error(_cause(exc))
            return None
        return model, cube, spec

    def extract(self) -> None:
        """Whole-scene features into the on-disk cache (a cache hit returns at once)."""
        from napari_mtmsd.pipeline import iter_features

        prepared = self._prepare()
        if prepared is None:
            return
        model, cube, spec = prepared
        key = self._inputs_key()

        def on_done(store: Any) -> None:
            self._set_store(store, key)
            self._show_cache()
            self.session.features_changed.emit()

        self.session.runner.start(
            "Extract features", iter_features(model, cube, spec, self._device()), on_done
        )

    def train_and_predict(self) -> None:
        """Train on the current training labels, then predict the whole cube (one job)."""
        self._train(require_cache=False)

    def update_prediction(self) -> None:
        """Continue training from the current labels on cached features and show the new
        prediction (a full training when the classes or the features changed)."""
        self._train(require_cache=True, update=True)

    def _train(self, require_cache: bool, update: bool = False) -> None:
        from napari_mtmsd.pipeline import iter_predict, iter_train, warm_start_mismatch

        from ._data import _error

        prepared = self._prepare()
        if prepared is None:
            return
        model, cube, spec = prepared
        store = self.current_store()
        if require_cache and store is None:
            _error("no cached features for this model, cube and spec: click 'Extract features'")
            return
        try:
            labels = self.session.training_labels().copy()
        except Exception as exc:  # no labels, wrong shape
            _error(str(exc))
            return
        names, colors = list(self.session.class_names), self.session.colors.copy()
        device, kwargs, key = self._device(), self.classifier_kwargs(), self._inputs_key()
        name, warm = "Train and predict", None
        if update:
            bundle = self.session.bundle
            reason = (
                "no classifier yet"
                if bundle is None
                else warm_start_mismatch(bundle, model, spec, labels)
            )
            if reason is None:
                name, warm = "Update", bundle
                kwargs = {"epochs": self.update_epochs.value()}
            else:
                name = "Update (full training)"
                from napari.utils.notifications import show_info

                show_info(f"Update trains a new classifier: {reason}")

        reuse = self._reuse if store is not None else {}

        def job() -> Any:
            from napari_mtmsd.pipeline import iter_features

            nonlocal store
            if store is None:
                store = yield from iter_features(model, cube, spec, device)
            bundle = yield from iter_train(
                model,
                cube,
                labels,
                spec,
                class_names=names,
                colors=colors,
                device=device,
                store=store,
                warm_start=warm,
                **kwargs,
            )
            class_map, confidence = yield from iter_predict(
                bundle, cube, device, store=store, reuse=reuse
            )
            return store, bundle, class_map, confidence

        def on_done(result: tuple) -> None:
            new_store, bundle, class_map, confidence = result
            self._set_store(new_store, key, reuse)
            self._show_cache()
            self.session.bundle = bundle
            self.session.train_labels_used = labels
            self.show_prediction(class_map, confidence)
            self.session.bundle_changed.emit()
            self.session.features_changed.emit()

        self.session.runner.start(name, job(), on_done)

    def show_prediction(
        self,
        class_map: np.ndarray,
        confidence: np.ndarray,
        layer: Any | None = None,
        suffix: str = "",
    ) -> None:
        """The class map as a Labels layer (class colours and names) and the confidence image."""
        transform = self.session.transform(layer)
        bundle = self.session.bundle
        names = list(bundle.class_names or self.session.class_names)
        colors = bundle.colors if bundle.colors is not None else self.session.colors
        show_labels(
            self.session.viewer, PREDICTION_LAYER + suffix, class_map, names, colors, transform
        )
        show_image(
            self.session.viewer,
            CONFIDENCE_LAYER + suffix,
            confidence,
            transform,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            visible=False,
        )
        if not suffix:
            self.evaluate()

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

        bundle = self.session.bundle
        if bundle is None:
            _error("no classifier to save: train one first")
            return None
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Save classifier into folder")
            if not path:
                return None
        try:
            return bundle.save(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot save the classifier to {path}: {_cause(exc)}")
            return None

    def load_classifier(self, path: str | Path | None = None) -> Any:
        """Load a saved classifier; its diffusion model becomes the current model."""
        from napari_mtmsd.pipeline import ClassifierBundle

        from ._data import _cause, _error

        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Load classifier folder")
            if not path:
                return None
        try:
            bundle = ClassifierBundle.load(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot load a classifier from {path}: {_cause(exc)}")
            return None
        self.session.model = bundle.model
        self.session.model_changed.emit()
        self.timesteps.setText(format_ints(bundle.spec.timesteps))
        self.stages.setText(format_ints(bundle.spec.stages))
        self.noise_draws.setValue(bundle.spec.noise_draws)
        if bundle.class_names:
            self.session.set_classes(list(bundle.class_names), bundle.colors)
        self.session.bundle = bundle
        self.session.bundle_changed.emit()
        return bundle

    def apply_to_layer(self, layer: Any | None = None) -> None:
        """Predict another open cube with the current classifier (features cached for it too)."""
        from napari_mtmsd.pipeline import iter_predict

        from ._data import _cause, _error

        bundle = self.session.bundle
        layer = self.apply_combo.layer() if layer is None else layer
        if bundle is None or layer is None:
            _error("train or load a classifier, and choose the cube to apply it to")
            return
        try:
            cube = self.session.cube(layer)
        except Exception as exc:  # not a cube
            _error(_cause(exc))
            return
        suffix = f" [{layer.name}]"
        self.session.runner.start(
            f"Apply to {layer.name}",
            iter_predict(bundle, cube, self._device()),
            lambda result: self.show_prediction(*result, layer=layer, suffix=suffix),
        )

    # scores --------------------------------------------------------------------------------
    def evaluate(self) -> dict | None:
        """OA / AA / kappa and the confusion matrix of the prediction against the ground truth.

        Scored on the ground-truth pixels that were not training pixels of the classifier shown.
        A failure is shown, never raised: the prediction layers are already in place.
        """
        from ._data import _cause, _error

        try:
            return self._evaluate()
        except Exception as exc:  # shown, with the cause
            self.scores_info.setText("")
            self.confusion.setVisible(False)
            _error(f"cannot score the prediction: {_cause(exc)}")
            return None

    def _evaluate(self) -> dict | None:
        gt_layer = self.gt_combo.layer()
        viewer = self.session.viewer
        if gt_layer is None or PREDICTION_LAYER not in viewer.layers:
            self.scores_info.setText("")
            self.confusion.setVisible(False)
            return None
        gt = np.asarray(gt_layer.data)
        pred = np.asarray(viewer.layers[PREDICTION_LAYER].data)
        if gt.shape != pred.shape:
            self.scores_info.setText(
                f"ground truth {gt_layer.name!r} is {gt.shape}, the prediction {pred.shape}"
            )
            self.confusion.setVisible(False)
            return None
        used = getattr(self.session, "train_labels_used", None)
        test = gt > 0
        if used is not None and used.shape == gt.shape:
            test &= used == 0
        if not test.any():
            self.scores_info.setText("no ground-truth pixels outside the training labels")
            return None
        from napari_mtmsd.metrics import scores

        labels = sorted(
            {int(v) for v in np.unique(gt[test])}
            | {int(v) for v in np.unique(pred[test]) if v > 0}
        )
        report = scores(gt[test], pred[test], labels=labels)
        self.scores_info.setText(
            f"OA {report['oa']:.2f}   AA {report['aa']:.2f}   kappa {report['kappa']:.2f}   "
            f"on {int(test.sum())} test pixels (ground truth minus training labels)"
        )
        self._plot_confusion(np.asarray(report["confusion_matrix"]), labels)
        self.last_scores = report
        return report

    def _plot_confusion(self, matrix: np.ndarray, labels: list[int]) -> None:
        fig = self.confusion.figure
        fig.clear()
        ax = fig.add_subplot(111)
        rows = matrix.sum(axis=1, keepdims=True)
        norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, [str(v) for v in labels], fontsize=6)
        ax.set_yticks(ticks, [str(v) for v in labels], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title("confusion (row-normalised)", fontsize=8)
        fig.tight_layout()
        self.confusion.setVisible(True)
        self.confusion.draw_idle()
