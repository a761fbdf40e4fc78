"""napari-mtmsd: hyperspectral classification with multi-timestep multi-stage diffusion features.

The public API is importable from here; modules load on first use, so importing the package (as
napari does at start-up) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Cube": "io",
    "LabelMap": "io",
    "read_cube": "io",
    "read_labels": "io",
    "write_cube": "io",
    "write_labels": "io",
    "load_input": "io",
    "load_indian_pines": "samples",
    "synthetic_scene": "samples",
    "iter_pretrain": "pretrain",  # (`pretrain` itself: napari_mtmsd.pretrain is its module)
    "DiffusionModel": "model",
    "FeatureSpec": "features",
    "extract_pixels": "features",
    "feature_map": "features",
    "MTMSDClassifier": "classifier",
    "ClassifierBundle": "bundle",
    "train": "pipeline",
    "predict": "pipeline",
    "evaluate": "evaluation",
    "Workspace": "workspace",
    "make_split": "splits",
    "scores": "metrics",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
