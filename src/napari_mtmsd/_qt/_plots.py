"""A small matplotlib canvas for the confusion matrix and the attention plot (Qt agg backend)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy


class PlotCanvas(FigureCanvasQTAgg):
    """A fixed-height figure that follows the dock's width; small fonts, transparent face."""

    def __init__(self, height: float = 2.4) -> None:
        figure = Figure(figsize=(3.2, height), dpi=100)
        super().__init__(figure)
        self.setMinimumHeight(int(height * 100))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
