"""The classifier's directory: ``classifier.json`` (hyperparameters, classes, purification,
history, versions) and ``weights.safetensors`` (the ensemble's weights and the channel
statistics), written atomically and read with every defect named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ._atomic import atomic_dir
from ._versioned import read_json, versions, write_json
from .errors import ModelFileError

FORMAT = "napari-mtmsd-classifier"
FORMAT_VERSION = 1
CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "weights.safetensors"
_WHAT = "a directory written by MTMSDClassifier.save"


def write(path: str | Path, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """``path/`` with ``record`` (stamped with the format and versions) and ``tensors``."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path, kind="classifier heads") as tmp:
        write_json(tmp / CONFIG_FILE, FORMAT_VERSION, {"format": FORMAT, **record,
                                                       "versions": versions()})  # fmt: skip
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
    return path


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record and the tensors of ``path/``; ModelFileError naming a missing, corrupt or
    foreign file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    config = read_json(config_path, FORMAT_VERSION, _WHAT, "train the classifier again")
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{config_path}: not a classifier file (expected {_WHAT})")
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path}: file not found (expected {_WHAT})")
    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: unreadable or corrupt weights ({exc})") from exc
    return config, tensors
