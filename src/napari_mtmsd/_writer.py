"""npe2 writers: Labels to ENVI Classification, .mat, .tif or .npy; an Image cube to ENVI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .io import Cube, Georef, LabelMap, write_cube, write_labels
from .io._envi import output_paths


def _class_names(meta: dict) -> list[str] | None:
    names = (meta.get("metadata") or {}).get("class_names")
    if names:
        return [str(n) for n in names]
    features = meta.get("features")
    if features is not None and "class_name" in features:
        return [str(n) for n in list(features["class_name"])[1:]]
    return None


def _colors(meta: dict) -> np.ndarray | None:
    colors = (meta.get("metadata") or {}).get("colors")
    return None if colors is None else np.asarray(colors, dtype=np.uint8).reshape(-1, 3)


def _georef(meta: dict) -> Georef | None:
    """The georeferencing the reader (or the classify widget) left in the layer metadata, when
    it still fits the data."""
    georef = (meta.get("metadata") or {}).get("georef")
    return georef if isinstance(georef, Georef) else None


def napari_write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """A Labels layer by extension; class names, colours and georeferencing from the layer
    metadata/features."""
    labels = LabelMap(
        data=np.asarray(data), name=meta.get("name") or Path(path).stem, georef=_georef(meta)
    )
    written = write_labels(path, labels, class_names=_class_names(meta), colors=_colors(meta))
    if written.suffix.lower() == ".hdr":
        return [str(p) for p in output_paths(written)]
    return [str(written)]


def napari_write_cube(path: str, data: Any, meta: dict) -> list[str]:
    """An Image layer as an ENVI cube: band-first 3-D (as the reader makes it), RGB or 2-D."""
    md = dict(meta.get("metadata") or {})
    if meta.get("rgb"):
        cube_data = data  # (H, W, 3|4)
    elif data.ndim == 2:
        cube_data = np.asarray(data)[:, :, None]
    elif data.ndim == 3:
        cube_data = np.moveaxis(data, 0, 2)  # napari's band-first layout back to (H, W, B)
    else:
        from .errors import InputError

        raise InputError(
            f"{path}: only 2-D or band-first 3-D images are written, got {data.shape}"
        )
    wl = md.get("wavelengths")
    if wl is not None and len(wl) != cube_data.shape[2]:
        wl = None
    cube = Cube(
        data=cube_data,
        wavelengths=wl,
        wavelength_units=md.get("wavelength_units"),
        ignore_value=md.get("ignore_value"),
        name=meta.get("name") or Path(path).stem,
        metadata={k: md[k] for k in ("fwhm", "band_names", "default_bands",
                                      "reflectance_scale_factor") if md.get(k) is not None},
        georef=_georef(meta) if cube_data.shape[:2] == tuple(md.get("cube_shape", [])[:2])
        else None,
    )  # fmt: skip
    hdr = write_cube(path, cube)
    return [str(p) for p in output_paths(hdr)]
