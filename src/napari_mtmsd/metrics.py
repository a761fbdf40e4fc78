"""Accuracy figures on test pixels (OA, AA, kappa x100, per class, confusion) and PNG plots.

matplotlib is imported inside the plot functions and used through ``matplotlib.figure.Figure``
(Agg canvas), never pyplot: no global backend switch, no GUI, safe from a napari worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from ._atomic import atomic_path
from .errors import InputError


def scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[int] | None = None,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """OA, AA and Cohen's kappa (all x100), per-class accuracy (recall) and confusion matrix.

    ``labels`` fixes the classes and their order (default: ``1..n_classes`` when ``n_classes``
    is given, else every value in ``y_true`` or ``y_pred``). A class absent from ``y_true`` has
    accuracy ``None`` and does not count in AA. ``confusion_matrix[i][j]`` counts true class
    ``labels[i]`` predicted as ``labels[j]``. Plain Python types, ready for JSON.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise InputError(
            f"{len(y_true)} true labels and {len(y_pred)} predictions: expected the same number"
        )
    if len(y_true) == 0:
        raise InputError("no test pixels to score: expected at least one")
    if labels is None:
        labels = np.arange(1, n_classes + 1) if n_classes else np.union1d(y_true, y_pred)
    labels = [int(v) for v in labels]
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(labels)), where=support > 0)
    return {
        "oa": float(100.0 * (y_true == y_pred).mean()),
        "aa": float(100.0 * recall[support > 0].mean()),
        "kappa": float(100.0 * cohen_kappa_score(y_true, y_pred)),
        "per_class_accuracy": [
            float(100.0 * r) if s else None for r, s in zip(recall, support, strict=True)
        ],
        "confusion_matrix": cm.tolist(),
        "labels": labels,
        "n": len(y_true),
    }


def score_map(
    gt: np.ndarray, pred: np.ndarray, test: np.ndarray, labels: Sequence[int] | None = None
) -> dict[str, Any]:
    """:func:`scores` of a class map against a ground truth on the ``test`` pixels (all three
    (H, W)); the classes default to those present there in either map."""
    gt, pred, test = np.asarray(gt), np.asarray(pred), np.asarray(test, dtype=bool)
    if labels is None:
        labels = sorted({int(v) for v in np.unique(gt[test])} | {
            int(v) for v in np.unique(pred[test]) if v > 0
        })
    return scores(gt[test], pred[test], labels=labels)


def format_table(rows: Sequence[dict[str, Any]], digits: int = 2) -> str:
    """Plain-text table of dicts (columns = keys of the first row; floats to ``digits``)."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(str(col)), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line([str(c) for c in columns]), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _names(class_names: Sequence[str] | None, n: int) -> list[str]:
    names = list(class_names or [])
    return [names[i] if i < len(names) else f"class {i + 1}" for i in range(n)]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_class_map(
    path: str | Path,
    class_map: np.ndarray,
    class_names: Sequence[str] | None = None,
    colors: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """PNG of a class map ``(H, W)`` (0 = background, drawn black) with a legend of its classes.

    ``colors`` is ``(K + 1, 3)`` uint8 with row 0 the background; by default tab20.
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise InputError(f"class map of shape {class_map.shape}: expected (H, W)")
    n = max(int(class_map.max(initial=0)), len(class_names or []))
    if colors is None:
        tab = colormaps["tab20"]
        rgb = np.array([[0.0, 0.0, 0.0]] + [tab(i % 20)[:3] for i in range(n)])
    else:
        rgb = np.asarray(colors, dtype=np.float64)[:, :3] / 255.0
        if len(rgb) < n + 1:
            raise InputError(f"{len(rgb)} colours for {n} classes: expected {n + 1} rows")
    names = _names(class_names, n)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ax.imshow(
        class_map,
        cmap=ListedColormap(rgb),
        vmin=-0.5,
        vmax=len(rgb) - 0.5,
        interpolation="nearest",
    )
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    shown = [c for c in range(1, n + 1) if (class_map == c).any()]
    handles = [Patch(color=rgb[c], label=f"{c} {names[c - 1]}") for c in shown]
    if handles:
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False
        )
    return _save(fig, path)


def plot_confusion(
    path: str | Path,
    confusion: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """PNG of a confusion matrix (rows true, columns predicted), coloured by row share, counts written."""
    from matplotlib.figure import Figure

    n = len(np.asarray(confusion))
    size = 3 + 0.45 * n
    fig = Figure(figsize=(size, size))
    draw_confusion(fig.subplots(), confusion, _names(class_names, n), title=title)
    return _save(fig, path)


def draw_confusion(
    ax: Any,
    confusion: np.ndarray | Sequence[Sequence[int]],
    names: Sequence[str],
    title: str | None = None,
    fontsize: float = 7,
) -> None:
    """A confusion matrix on matplotlib axes ``ax``: cells coloured by row share (recall), counts
    written while the matrix is small enough to read them (the PNG and the panel's plot)."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise InputError(f"confusion matrix of shape {cm.shape}: expected square (K, K)")
    n = len(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), list(names), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), list(names), fontsize=fontsize)
    ax.set_xlabel("predicted", fontsize=fontsize + 1)
    ax.set_ylabel("true", fontsize=fontsize + 1)
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    if n > 30:
        return
    for i, j in zip(*np.nonzero(cm), strict=True):
        color = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize - 1, color=color)
