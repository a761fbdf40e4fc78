"""Model: pretrain the diffusion model on the chosen cube (live loss, ETA, Stop), load, save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import Session, Sparkline, spin_box


def model_summary(model: Any) -> str:
    """One line: preset, size, bands -> components, patch, steps, source cube, fingerprint."""
    config = dict(model.config)
    parts = [
        str(config.get("preset", "custom")),
        f"{model.unet.n_parameters / 1e6:.2f} M params",
        f"{model.n_bands} bands -> {model.n_components} PCs",
        f"patch {model.patch_size}",
    ]
    steps = config.get("step", config.get("steps"))
    if steps:
        parts.append(f"{steps} steps")
    source = config.get("source", {})
    if isinstance(source, dict) and source.get("name"):
        parts.append(f"on {source['name']}")
    parts.append(f"#{model.fingerprint()[:8]}")
    return ", ".join(parts)


class ModelSection(QWidget):
    """Preset, device, steps; Pretrain (progress, loss, ETA, Stop); Load / Save; summary."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_mtmsd.config import PRESETS, PretrainConfig
        from napari_mtmsd.device import available_devices

        self.session = session
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText(PretrainConfig().preset)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.device.currentTextChanged.connect(self._device_changed)
        self._device_changed(self.device.currentText())
        self.steps = spin_box(PretrainConfig, "steps")
        self.steps.setSingleStep(100)
        self.steps.setSpecialValueText("preset default")
        self.seed = spin_box(PretrainConfig, "seed")
        self.pretrain_btn = QPushButton("Pretrain")
        self.load_btn = QPushButton("Load...")
        self.save_btn = QPushButton("Save...")
        self.loss = Sparkline()
        self.eta = QLabel("")
        self.summary = QLabel("no model: pretrain one or load a saved one")
        self.summary.setWordWrap(True)

        form = QFormLayout()
        form.addRow("preset", self.preset)
        form.addRow("device", self.device)
        form.addRow("steps", self.steps)
        form.addRow("seed", self.seed)
        buttons = QHBoxLayout()
        buttons.addWidget(self.pretrain_btn)
        buttons.addWidget(self.load_btn)
        buttons.addWidget(self.save_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.loss)
        layout.addWidget(self.eta)
        layout.addWidget(self.summary)

        self.pretrain_btn.clicked.connect(self.pretrain)
        self.load_btn.clicked.connect(lambda: self.load())
        self.save_btn.clicked.connect(lambda: self.save())
        session.ws.events.model.connect(self._model_changed)
        session.runner.busy_changed.connect(self._busy)
        self._busy(False)

    def _device_changed(self, name: str) -> None:
        self.session.ws.device = name or "auto"

    def _busy(self, busy: bool) -> None:
        for button in (self.pretrain_btn, self.load_btn):
            button.setEnabled(not busy)
        self.save_btn.setEnabled(not busy and self.session.model is not None)

    def _model_changed(self) -> None:
        model = self.session.model
        self.summary.setText("no model" if model is None else model_summary(model))
        self._busy(self.session.runner.busy)

    def pretrain(self) -> None:
        """Pretrain on the chosen cube in a worker; the model is replaced only when it finishes."""
        from napari_mtmsd.config import PretrainConfig

        from ._data import _cause, _error

        config = PretrainConfig(
            preset=self.preset.currentText(),
            steps=self.steps.value() or None,
            seed=self.seed.value(),
        )
        try:
            job = self.session.ws.pretrain_job(config)
        except Exception as exc:  # no cube: say so
            _error(_cause(exc))
            return
        self.loss.set_values([])
        self.eta.setText("starting...")

        def on_progress(record: dict) -> None:
            if "loss" in record:
                self.loss.append(float(record["loss"]))
            rate = record.get("samples_per_s")
            text = (
                f"step {record.get('step', 0)} / {record.get('total', record.get('steps', '?'))}"
            )
            if rate:
                text += f", {float(rate):.0f} patches/s"
            if record.get("eta"):
                text += f", {record['eta']}"
            if record.get("message"):
                text += f" ({record['message']})"
            self.eta.setText(text)

        def on_done(_: Any) -> None:
            self.eta.setText(f"done: {len(self.loss.values)} loss points")

        self.session.run(job, on_progress, on_done)

    def load(self, path: str | Path | None = None) -> Any:
        """Load a saved diffusion model directory."""
        from ._data import _cause, _error

        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Load diffusion model")
            if not path:
                return None
        try:
            return self.session.ws.load_model(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot load model from {path}: {_cause(exc)}")
            return None

    def save(self, path: str | Path | None = None) -> Path | None:
        """Save the current model to a directory (written atomically by the core)."""
        from ._data import _cause, _error

        model = self.session.model
        if model is None:
            _error("no model to save: pretrain or load one first")
            return None
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Save diffusion model into folder")
            if not path:
                return None
        try:
            self.session.ws.save_model(path)
        except Exception as exc:  # shown, with the cause
            _error(f"cannot save model to {path}: {_cause(exc)}")
            return None
        return Path(path)
