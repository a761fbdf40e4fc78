"""Diffusion features written for other tools: ``centre.npy`` and ``global.npy`` (float16), with
``coords.npy`` and ``labels.npy`` for labelled pixels, and a ``features.json`` sidecar that says
what they are (layout, spec, the channels of each stage, the model's fingerprint)."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._atomic import atomic_dir
from ._progress import Progress
from .errors import InputError
from .features import FeatureSpec
from .pipeline import iter_features, labelled_pixels

if TYPE_CHECKING:
    from .io import Cube
    from .model import DiffusionModel


def iter_export(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec,
    out: str | Path,
    labels: np.ndarray | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    about: dict[str, Any] | None = None,
    engine: Any = None,
) -> Generator[Progress, None, tuple[int, ...]]:
    """Every pixel's features (dense, through the cache; with ``engine``, a
    ``distributed.DaskEngine``, computed as dask tasks straight into the output), or with
    ``labels`` (H, W) those of its labelled pixels, into the directory ``out`` (atomically);
    returns their shape. ``about`` joins the sidecar (where the model and the input came from)."""
    from .features import iter_extract_pixels

    out = Path(out)
    with atomic_dir(out, kind="features") as tmp:
        if labels is None and spec.mode != "dense":
            raise InputError("--pixels all needs --mode dense (patch mode is per pixel)")
        if labels is None and engine is not None:
            shape = yield from engine.iter_export(model, cube, spec, tmp, device)
            layout = "(rows, cols, timesteps, channels)"
        elif labels is None:
            store = yield from iter_features(model, cube, spec, device, cache_dir)
            shape = _save_store(tmp, store)
            layout = "(rows, cols, timesteps, channels)"
        else:
            coords, y = labelled_pixels(labels)
            centre, glob = yield from iter_extract_pixels(model, cube, coords, spec, device)
            np.save(tmp / "coords.npy", coords)
            np.save(tmp / "labels.npy", y)
            shape = _save(tmp, centre, glob)
            layout = "(pixels, timesteps, channels); coords.npy gives (row, col) of each pixel"
        sidecar = {
            "layout": layout,
            "shape": list(shape),
            "dtype": "float16",
            "spec": spec.to_dict(),
            "stage_channels": list(model.unet.stage_channels(spec.stages)),
            **(about or {}),
            "model_fingerprint": model.fingerprint(),
        }
        (tmp / "features.json").write_text(json.dumps(sidecar, indent=1))
    return tuple(shape)


def _save(tmp: Path, centre: Any, glob: Any) -> tuple[int, ...]:
    np.save(tmp / "centre.npy", centre)
    np.save(tmp / "global.npy", glob)
    return tuple(centre.shape)


def _save_store(tmp: Path, store: Any) -> tuple[int, ...]:
    """A cache entry's features written as (H, W, T, D) arrays, formed a band of rows at a time
    (``cache.FeatureStore`` keeps the stage maps they come from)."""
    H, W, T, D = store.shape
    maps = [
        np.lib.format.open_memmap(tmp / name, "w+", np.float16, (H, W, T, D))
        for name in ("centre.npy", "global.npy")
    ]
    flat = [m.reshape(H * W, T, D) for m in maps]  # views of the C-order maps
    for idx, c, g in store.chunks(1 << 14):
        flat[0][idx], flat[1][idx] = c, g
    for m in maps:
        m.flush()
    return (H, W, T, D)
