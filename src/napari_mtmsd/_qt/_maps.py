"""The class maps on screen: the workspace's prediction (a Labels layer in the class colours,
the confidence image, the places to paint next) and other cubes' maps, and a map while it is
predicted.

A map being predicted is on screen from its first finished region: its layers hold the arrays
the job fills in place (``update.PartialMap``) and are redrawn a few times a second, never
copied; a Stop leaves them as they are, said to be partial."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QLabel

from ._common import Session
from ._layers import show_image, show_labels, show_points

PREDICTION_LAYER = "prediction"
CONFIDENCE_LAYER = "confidence"
SUGGESTIONS_LAYER = "paint here"
#: What the line under the buttons says of each map (``update.Prediction.method``).
MAP_KINDS = {
    "quick": "quick map from the spectra (no diffusion model yet; the MTMSD map replaces it "
    "when pretraining ends)",
    "few-label": "MTMSD map, few-label head",
    "paper": "MTMSD map, the paper's fusion ensemble",
}
#: Redraws of a map being predicted: at most every REFRESH_MS, and the redraws take at most a
#: REFRESH_SHARE of napari's thread (a redraw recolours the whole layer: slower on large scenes).
REFRESH_MS = 200
REFRESH_SHARE = 0.2


class MapLayers(QObject):
    """Shows the maps of one session; ``info`` is the line that says which map is shown."""

    def __init__(self, session: Session, info: QLabel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.ws, self.info = session, session.ws, info
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self._tick)
        self._filling: tuple[Any, list[Any], str] | None = None  # map, its layers, suffix
        self._target: tuple[Any, Any, str] | None = None  # another cube's map, its layer, suffix
        self.ws.events.partial.connect(self._show_partial)
        self.ws.events.partial_region.connect(self._region_done)
        session.runner.busy_changed.connect(self._job_ended)

    def show(
        self, class_map: np.ndarray, confidence: np.ndarray, layer: Any = None, suffix: str = ""
    ) -> list[Any]:
        """The Labels layer of ``class_map`` (class colours and names) and the confidence image,
        made or given these arrays, aligned with ``layer`` (default: the cube's)."""
        transform = self.session.transform(layer)
        bundle = self.session.bundle  # None for the quick map
        names = list((bundle and bundle.class_names) or self.session.class_names)
        colors = self.session.colors if bundle is None or bundle.colors is None else bundle.colors
        viewer = self.session.viewer
        labels = show_labels(viewer, PREDICTION_LAYER + suffix, class_map, names, colors, transform)
        image = show_image(
            viewer, CONFIDENCE_LAYER + suffix, confidence, transform,
            colormap="magma", contrast_limits=(0.0, 1.0), visible=False,
        )  # fmt: skip
        return [labels, image]

    def show_workspace_prediction(self) -> bool:
        """The workspace's prediction, what it is and where to paint next; False without one."""
        prediction = self.ws.prediction
        if prediction is None:
            return False
        self.show(prediction.class_map, prediction.confidence)
        self.info.setText(f"shown: {MAP_KINDS.get(prediction.method, prediction.method)}")
        if prediction.suggestions is not None:
            show_points(
                self.session.viewer, SUGGESTIONS_LAYER, prediction.suggestions,
                self.session.transform(None), size=max(prediction.class_map.shape) / 30,
            )  # fmt: skip
        return True

    def expect(self, partial: Any, layer: Any, suffix: str) -> None:
        """The next job fills ``partial``, another cube's map: its layers follow ``layer``."""
        self._target = (partial, layer, suffix)

    # a map being predicted -------------------------------------------------------------------
    def _show_partial(self, partial: Any) -> None:
        layer, suffix = None, ""
        if self._target is not None and self._target[0] is partial:
            _, layer, suffix = self._target
        self._filling = (partial, self.show(partial.class_map, partial.confidence, layer, suffix),
                         suffix)  # fmt: skip
        self._say()

    def _region_done(self, region: Any) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _tick(self) -> None:
        if self._filling is not None:
            self._redraw()
            self._say()

    def _redraw(self) -> None:
        """Redraw the layers being filled; the next redraw waits so that redraws stay within
        ``REFRESH_SHARE`` of napari's thread."""
        t0 = time.perf_counter()
        for layer in self._filling[1]:
            layer.refresh()  # an invisible layer returns at once: napari slices it when shown
        took_ms = 1000 * (time.perf_counter() - t0)
        self._timer.setInterval(max(REFRESH_MS, round(took_ms / REFRESH_SHARE)))

    def _say(self) -> None:
        partial, _, suffix = self._filling
        if not suffix and partial is self.ws.partial:  # not yet committed (then that is said)
            self.info.setText(f"shown: the map being predicted, {_percent(partial)} done")

    def _job_ended(self, busy: bool) -> None:
        """The last regions drawn; a map the job did not finish (a Stop, a failure) stays on
        screen, said to be partial."""
        if busy:
            return
        self._target = None
        if self._filling is None:
            return
        self._timer.stop()
        self._redraw()
        partial, _, suffix = self._filling
        self._filling = None
        self._timer.setInterval(REFRESH_MS)
        if not suffix and partial is self.ws.partial:
            self.info.setText(
                f"shown: a partial map, {_percent(partial)} of the scene predicted (the job did "
                "not finish); the workspace keeps the last complete prediction"
            )


def _percent(partial: Any) -> str:
    return f"{100 * partial.fraction:.0f} %"
