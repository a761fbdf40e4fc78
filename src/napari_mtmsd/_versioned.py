"""The JSON records the package writes beside its files (model, classifier, bundle): read with
one check of presence, syntax and format version, and stamped with one record of versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelFileError


def read_json(path: Path, version: int, what: str, hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path`` if its ``format_version`` is ``version``; ModelFileError
    naming the file otherwise. ``what`` is what the directory should be ("a classifier
    directory"); ``hint`` what to do about another version."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no {path.name} in {path.parent} (file not found): it is not {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable or corrupt JSON, not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} must hold a JSON object: it is not {what}")
    got = data.get("format_version")
    if got != version:
        raise ModelFileError(
            f"{path} is format {got!r} (format version {got!r}, the file's format_version); "
            f"this napari-mtmsd ({__version__}) reads format version {version}"
            + (f": {hint}" if hint else "")
        )
    return data


def write_json(path: Path, version: int, record: dict[str, Any]) -> None:
    """``record`` with its ``format_version`` (``path`` lies in an ``atomic_dir``)."""
    Path(path).write_text(
        json.dumps({"format_version": version, **record}, indent=1), encoding="utf-8"
    )


def versions() -> dict[str, str]:
    """The versions that made a file: this package and the libraries its numbers depend on."""
    from importlib import metadata

    import numpy as np

    out = {"napari-mtmsd": __version__, "numpy": np.__version__}
    for name in ("torch", "scikit-learn", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
