"""Inspect: what the diffusion model sees at each timestep, and which timesteps each class uses.

Nothing here computes features: it shows the workspace's cached whole-scene features (as a
lazily sliced Image layer, or as a PCA-to-RGB view per timestep, ``diagnostics``) and the
trained classifier's timestep attention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._common import Session, Sparkline
from ._layers import show_image

FEATURES_LAYER = "features"
PCA_LAYER = "features PCA (RGB)"

class InspectSection(QWidget):
    """Feature layers per timestep, PCA to RGB, timestep attention per class, spectrum."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ._plots import PlotCanvas

        self.session = session
        self.features_btn = QPushButton("Show features")
        self.features_btn.setToolTip("an Image layer with dims timestep, channel, y, x")
        self.pca_btn = QPushButton("PCA to RGB")
        self.pca_btn.setToolTip("3 principal components of the features, per timestep, as colours")
        self.attention_btn = QPushButton("Timestep attention")
        self.spectrum_box = QCheckBox("spectrum at cursor")
        self.info = QLabel("extract features (Classify) to inspect them")
        self.info.setWordWrap(True)
        self.attention = PlotCanvas(height=2.2)
        self.attention.setVisible(False)
        self.spectrum = Sparkline()
        self.spectrum.title = "spectrum"
        self.spectrum.setVisible(False)
        grid = QGridLayout()
        grid.addWidget(self.features_btn, 0, 0)
        grid.addWidget(self.pca_btn, 0, 1)
        grid.addWidget(self.attention_btn, 1, 0)
        grid.addWidget(self.spectrum_box, 1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(grid)
        layout.addWidget(self.info)
        layout.addWidget(self.attention)
        layout.addWidget(self.spectrum)

        self.features_btn.clicked.connect(self.show_features)
        self.pca_btn.clicked.connect(self.show_pca)
        self.attention_btn.clicked.connect(self.show_attention)
        self.spectrum_box.toggled.connect(self._toggle_spectrum)
        session.runner.busy_changed.connect(self._busy)
        session.ws.events.features.connect(self._refresh)
        session.ws.events.classifier.connect(self._refresh)
        self._refresh()

    def _store(self) -> Any | None:
        return self.session.ws.features

    def _busy(self, busy: bool) -> None:
        has_store = self._store() is not None
        self.features_btn.setEnabled(not busy and has_store)
        self.pca_btn.setEnabled(not busy and has_store)
        bundle = self.session.bundle
        attends = bundle is not None and bundle.method == "paper"  # the fusion's attention
        self.attention_btn.setEnabled(not busy and has_store and attends)
        self.attention_btn.setToolTip(
            "" if bundle is None or attends else "the timestep attention is the paper "
            "classifier's: choose the method 'paper' in Classify and train"
        )

    def _refresh(self) -> None:
        store = self._store()
        if store is not None:
            spec = store.spec
            channels = store.meta.get("stage_channels", [])
            ranges, start = [], 0
            for stage, n in zip(spec.stages, channels, strict=False):
                ranges.append(f"stage {stage}: ch {start}-{start + n - 1}")
                start += n
            self.info.setText(
                f"timesteps {', '.join(str(t) for t in spec.timesteps)}; " + "; ".join(ranges)
            )
        self._busy(self.session.runner.busy)

    def show_features(self) -> Any:
        """The cached centre features as a lazily read layer: (timestep, channel, y, x)."""
        store = self._store()
        if store is None:
            return None
        data = np.transpose(store.view(), (2, 3, 0, 1))  # formed where displayed
        layer = show_image(
            self.session.viewer,
            FEATURES_LAYER,
            data,
            self.session.transform(),
            axis_labels=("timestep", "channel", "y", "x"),
            colormap="viridis",
            contrast_limits=_limits(store.view()),
        )
        layer.metadata["timesteps"] = list(store.spec.timesteps)
        return layer

    def show_pca(self) -> None:
        """A (timestep, y, x) RGB layer: scroll the timestep slider to see the features change."""
        store = self._store()
        if store is None:
            return
        timesteps = store.spec.timesteps
        transform = self.session.transform()

        def on_done(rgb: np.ndarray) -> None:
            layer = show_image(
                self.session.viewer,
                PCA_LAYER,
                rgb,
                transform,
                rgb=True,
                axis_labels=("timestep", "y", "x"),
            )
            layer.metadata["timesteps"] = list(timesteps)

        from napari_mtmsd.diagnostics import iter_pca_rgb

        self.session.runner.start(
            "PCA per timestep", iter_pca_rgb(store.view(), timesteps), on_done
        )

    def show_attention(self) -> None:
        """Mean learned attention over timesteps for each class, on its training pixels."""
        from napari_mtmsd.diagnostics import iter_class_attention

        store, bundle = self._store(), self.session.bundle
        labels = self.session.train_labels_used
        if store is None or bundle is None or labels is None or bundle.method != "paper":
            return
        timesteps = store.spec.timesteps
        names = list(bundle.class_names or self.session.class_names)
        colors = bundle.colors if bundle.colors is not None else self.session.colors

        def on_done(result: tuple[np.ndarray, np.ndarray]) -> None:
            classes, weights = result
            fig = self.attention.figure
            fig.clear()
            ax = fig.add_subplot(111)
            for c, w in zip(classes, weights, strict=True):
                name = names[c - 1] if 0 < c <= len(names) else f"class {c}"
                color = np.asarray(colors[c], float) / 255 if c < len(colors) else None
                ax.plot(timesteps, w, marker=".", color=color, label=name, lw=1)
            ax.set_xlabel("timestep", fontsize=7)
            ax.set_ylabel("mean attention", fontsize=7)
            ax.tick_params(labelsize=6)
            if len(classes) <= 8:
                ax.legend(fontsize=5, ncol=2)
            fig.tight_layout()
            self.attention.setVisible(True)
            self.attention.draw_idle()

        job = iter_class_attention(bundle.classifier, store, labels)
        self.session.runner.start("Timestep attention", job, on_done)

    # spectrum under the cursor -------------------------------------------------------------
    def _toggle_spectrum(self, on: bool) -> None:
        callbacks = self.session.viewer.mouse_move_callbacks
        if on and self.on_mouse not in callbacks:
            callbacks.append(self.on_mouse)
        elif not on and self.on_mouse in callbacks:
            callbacks.remove(self.on_mouse)
        self.spectrum.setVisible(on)

    def on_mouse(self, viewer: Any, event: Any) -> None:
        layer = self.session.cube_layer()
        if layer is None:
            return
        axis = self.session.current_band_axis()
        coords = np.round(layer.world_to_data(viewer.cursor.position)).astype(int)
        rc = [int(coords[i]) for i in range(3) if i != axis]
        shape = [layer.data.shape[i] for i in range(3) if i != axis]
        if not all(0 <= v < n for v, n in zip(rc, shape, strict=True)):
            return
        index: list[Any] = list(rc)
        index.insert(axis, slice(None))
        self.spectrum.title = f"spectrum at row {rc[0]}, col {rc[1]}"
        self.spectrum.set_values(np.asarray(layer.data[tuple(index)], dtype=float).tolist())


def _limits(features: np.ndarray) -> tuple[float, float]:
    """Contrast limits from a sample of the features (a memory map is not read whole)."""
    sample = np.asarray(
        features[:: max(1, features.shape[0] // 16), :: max(1, features.shape[1] // 16)]
    )
    lo, hi = np.percentile(sample.astype(np.float32), [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0
