"""npe2 reader: a cube becomes a band-first Image layer plus an RGB preview; a label map Labels.

``get_reader`` looks at names and magic bytes only, answers None for anything else, and never
raises. Errors while reading become a napari notification naming the file, not a traceback.

Layers are in pixel coordinates unless map coordinates are asked for (``coords="map"``, or the
environment variable ``NAPARI_MTMSD_COORDS=map`` for files opened from napari's menus): then a
georeferenced cube or class map gets ``scale``/``translate``/``rotate`` that put every pixel
centre at its (northing, easting), and the status bar shows map coordinates. Northing grows
upwards on a map: ``viewer.camera.orientation2d = ("up", "right")`` shows it so.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MTMSDError
from .io import Cube, Georef, LabelMap, band_first, detect_format, read_cube, read_labels
from .io._other import npy_header, tiff_band_axis, tiff_geo, tiff_info

RGB_NM = (640.0, 550.0, 460.0)
PERCENTILES = (1.0, 99.0)
PREVIEW_MAX_SIDE = 2048  # larger cubes get a strided preview (scaled back to full size)
# Bytes of file pages a preview may touch: a band of a pixel-interleaved (BIP) file is spread over
# the whole file, so its preview is strided until it stays within this.
PREVIEW_BUDGET = 64 * 2**20
PAGE = 4096

LayerData = tuple[Any, dict, str]
COORDS_ENV = "NAPARI_MTMSD_COORDS"
PRODUCTS = ("folder", "emit", "prisma", "neon")


def map_coords_requested(coords: str | None = None) -> bool:
    """``coords`` ('map' or 'pixel'), else the NAPARI_MTMSD_COORDS environment variable."""
    choice = (coords or os.environ.get(COORDS_ENV, "pixel")).strip().lower()
    return choice == "map"


def _kind(path: Path, fmt: str | None) -> str | None:
    """'envi', 'mat' (cube or labels: decided when reading), 'cube', 'labels'; None: not ours."""
    if fmt in ("envi", "mat"):
        return fmt
    if fmt in PRODUCTS:
        return "cube"
    if fmt == "npy":
        head = npy_header(path)
        if head is None or head[1].kind not in "biuf":
            return None
        if len(head[0]) == 2:  # integer 2-D arrays are label maps; float ones plain images
            return "labels" if head[1].kind in "biu" else None
        return "cube" if len(head[0]) == 3 else None
    if fmt == "tiff":
        info = tiff_info(path)
        if info is None:
            return None
        shape, axes, meta = info
        if len(shape) == 2 and ("class_names" in meta or "colors" in meta):
            return "labels"
        if len(shape) == 2 and "Classification" in (tiff_geo(path)[1].item("file type") or ""):
            return "labels"
        if len(shape) == 3:
            # RGB(A) photos (3-4 samples) stay with napari's builtin reader.
            return "cube" if shape[tiff_band_axis(axes, shape)] > 4 else None
    return None


def get_reader(path: str | list[str]):
    """The reader function for ``path`` (or a list where every path is ours), else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    try:
        if any(_kind(Path(p), detect_format(p)) is None for p in paths):
            return None
    except Exception:  # get_reader must never raise: unreadable means "not ours"
        return None
    return read_paths


def read_paths(path: str | list[str]) -> list:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list = []
    for p in paths:
        try:
            layers.extend(read_layers(p))
        except MTMSDError as e:
            _notify("error", str(e))
        except Exception as e:  # napari would show a raw traceback: name the file instead
            _notify("error", f"{p}: could not be read ({type(e).__name__}: {e})")
    # [(None,)] is napari's "read, nothing to add" sentinel: no second error on top of ours.
    return layers or [(None,)]


def _notify(level: str, message: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "info": notifications.show_info}[level](message)


def read_layers(path: str | Path, coords: str | None = None) -> list[LayerData]:
    """Layer data tuples for one file (raises InputError with a clear message); ``coords``
    'map' places georeferenced layers in map units (default: pixels, or NAPARI_MTMSD_COORDS)."""
    path = Path(path)
    kind = _kind(path, detect_format(path))
    on_map = map_coords_requested(coords)
    if kind == "envi":
        cube = read_cube(path)
        if "Classification" in cube.metadata.get("file_type", ""):
            return [labels_layer(read_labels(path), map_coords=on_map)]
        return cube_layers(cube, map_coords=on_map)
    if kind == "mat":
        return _mat_layers(path)
    if kind == "labels":
        return [labels_layer(read_labels(path), map_coords=on_map)]
    return cube_layers(read_cube(path), map_coords=on_map)


def map_transform(georef: Georef | None, extra_dims: int = 0, step: int = 1) -> dict[str, Any]:
    """napari ``scale``/``translate``/``rotate`` for a layer on the map (pixel centres at their
    northing/easting), with ``extra_dims`` unit axes in front and pixels ``step`` apart."""
    t = georef.napari_transform() if georef is not None else {}
    if "scale" not in t:
        return {}
    rot = np.asarray(t.get("rotate", np.eye(2)))
    scale = np.asarray(t["scale"]) * step
    centre = (step - 1) / 2
    translate = np.asarray(t["translate"]) + rot @ (np.asarray(t["scale"]) * centre)
    full_rot = np.eye(2 + extra_dims)
    full_rot[extra_dims:, extra_dims:] = rot
    out = {
        "scale": (1.0,) * extra_dims + tuple(float(v) for v in scale),
        "translate": (0.0,) * extra_dims + tuple(float(v) for v in translate),
    }
    if "rotate" in t:
        out["rotate"] = full_rot
    return out


def _mat_layers(path: Path) -> list[LayerData]:
    """The cube when there is one (plus a label map of the same size), else the label map."""
    from .errors import InputError

    layers: list[LayerData] = []
    try:
        cube = read_cube(path)
    except InputError as cube_error:
        try:
            labels = read_labels(path)
        except InputError:
            raise cube_error from None
        _mention_others(labels.metadata)
        return [labels_layer(labels)]
    layers.extend(cube_layers(cube))
    _mention_others(cube.metadata)
    with contextlib.suppress(InputError):
        labels = read_labels(path)
        if labels.data.shape == cube.shape[:2]:
            layers.append(labels_layer(labels))
    return layers


def _mention_others(meta: dict) -> None:
    if meta.get("other_variables"):
        _notify(
            "info",
            f"{Path(meta['path']).name}: opened variable {meta['key']!r}; also there: "
            f"{', '.join(meta['other_variables'])} (choose with key= in Python, --key in the CLI)",
        )


def _sample_pixels(cube: Cube, max_rows: int = 16, max_cols: int = 256, max_bands: int = 16):
    """A small strided sample (rows x cols x bands) that touches few pages of any interleave."""
    h, w, b = cube.shape
    rows = np.unique(np.linspace(0, h - 1, min(h, max_rows)).astype(int))
    cols = slice(None, None, max(1, w // max_cols))
    bands = np.unique(np.linspace(0, b - 1, min(b, max_bands)).astype(int))
    return np.stack([np.asarray(cube.data[r, cols])[:, bands] for r in rows])


def _valid_values(values: np.ndarray, ignore: float | None) -> np.ndarray:
    values = values.astype(np.float64, copy=False).ravel()
    keep = np.isfinite(values)
    if ignore is not None:
        keep &= values != ignore
    return values[keep]


def robust_range(values: np.ndarray, ignore: float | None = None) -> tuple[float, float]:
    """Percentile limits of the finite, non-ignored values (min/max is ruined by spikes)."""
    v = _valid_values(values, ignore)
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, PERCENTILES))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def rgb_bands(cube: Cube) -> tuple[list[int], str]:
    """Bands for the colour preview and how they were chosen."""
    wl = cube.wavelengths_nm()
    if wl is not None and wl.min() <= 500 and wl.max() >= 600:
        return [int(np.abs(wl - t).argmin()) for t in RGB_NM], "nearest 640/550/460 nm"
    default = cube.metadata.get("default_bands")
    if default and len(default) == 3 and all(0 <= b < cube.n_bands for b in default):
        return [int(b) for b in default], "header default bands"
    b = cube.n_bands
    return [round(f * (b - 1)) for f in (0.75, 0.5, 0.25)], "three spread bands"


def _spectra_contiguous(data: Any) -> bool:
    """BIP-like layout: a pixel's spectrum is contiguous, a band is spread over the whole file."""
    strides = getattr(data, "strides", None)
    return strides is not None and abs(strides[2]) < abs(strides[1])


def preview_step(cube: Cube) -> int:
    """Spatial stride of the preview: within PREVIEW_MAX_SIDE, and within PREVIEW_BUDGET of pages
    when spectra are contiguous (BIP), where every sampled pixel costs a page."""
    h, w, _ = cube.shape
    step = max(1, -(-max(h, w) // PREVIEW_MAX_SIDE))
    if _spectra_contiguous(cube.data):
        per_pixel = min(PAGE, abs(cube.data.strides[1]))
        while (-(-h // step)) * (-(-w // step)) * per_pixel > PREVIEW_BUDGET:
            step += 1
    return step


def rgb_preview(cube: Cube) -> tuple[np.ndarray, int, list[int], str]:
    """(H', W', 3) float32 in [0, 1], each band stretched by its own percentiles; stride used."""
    bands, how = rgb_bands(cube)
    step = preview_step(cube)
    planes = []
    for b in bands:
        plane = np.asarray(cube.data[::step, ::step, b], dtype=np.float32)
        lo, hi = robust_range(plane[:: max(1, plane.shape[0] // 256)], cube.ignore_value)
        planes.append(np.clip((plane - lo) / (hi - lo), 0.0, 1.0))
    rgb = np.stack(planes, axis=-1)
    rgb[~np.isfinite(rgb)] = 0.0
    return rgb, step, bands, how


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def cube_layers(cube: Cube, preview: bool = True, map_coords: bool = False) -> list[LayerData]:
    """A band-first Image layer (lazy view, percentile contrast) and an RGB preview layer, in
    map units when ``map_coords`` and the cube is georeferenced on a grid."""
    meta = {k: _plain(v) for k, v in cube.metadata.items()}
    meta.update(
        wavelengths=_plain(cube.wavelengths),
        wavelength_units=cube.wavelength_units,
        ignore_value=cube.ignore_value,
        cube_shape=list(cube.shape),
        band_axis=0,
        cube=cube,  # the lazy (H, W, B) cube itself, so widgets never re-read or copy the data
        georef=cube.georef,
    )
    placed = map_transform(cube.georef, extra_dims=1) if map_coords else {}
    spatial = ("northing", "easting") if placed else ("y", "x")
    wl = cube.wavelengths
    name = cube.name
    if wl is not None:
        name = f"{cube.name} ({wl.min():g}-{wl.max():g} {cube.wavelength_units or ''})".strip()
    layers: list[LayerData] = [
        (
            band_first(cube.data),
            {
                "name": name,
                "metadata": meta,
                "contrast_limits": robust_range(_sample_pixels(cube), cube.ignore_value),
                "axis_labels": ("band", *spatial),
                "colormap": "gray",
                **placed,
            },
            "image",
        )
    ]
    if preview:
        rgb, step, bands, how = rgb_preview(cube)
        label = ", ".join(f"{b} ({wl[b]:g})" if wl is not None else str(b) for b in bands)
        where = map_transform(cube.georef, step=step) if placed else {}
        where = where or {"scale": (step, step), "translate": ((step - 1) / 2, (step - 1) / 2)}
        layers.append(
            (
                rgb,
                {
                    "name": f"{cube.name} RGB preview",
                    "rgb": True,
                    **where,
                    "metadata": {"rgb_bands": bands, "rgb_bands_from": how, "description": label},
                },
                "image",
            )
        )
    return layers


def _classes_shown(labels: LabelMap) -> list[int]:
    """Class ids present in the map (ids are bounded, so a count is one pass) and named ones."""
    counts = np.bincount(np.asarray(labels.data).ravel().astype(np.int64, copy=False))
    named = range(1, len(labels.class_names or []) + 1)
    return sorted({*(np.flatnonzero(counts[1:]) + 1).tolist(), *named})


def labels_layer(labels: LabelMap, map_coords: bool = False) -> LayerData:
    """A Labels layer with class names in ``features`` and the file's colours when it has them;
    in map units when ``map_coords`` and the map is georeferenced on a grid."""
    from napari.utils.colormaps import DirectLabelColormap

    from .io import default_colors

    k = labels.n_classes
    names = ["unlabelled", *(labels.class_names or [f"class {i}" for i in range(1, k + 1)])]
    names += [f"class {i}" for i in range(len(names), k + 1)]
    colors = labels.colors if labels.colors is not None else default_colors(k)
    if len(colors) < k + 1:
        colors = np.vstack([colors, default_colors(k)[len(colors) :]])
    color_dict: dict[int | None, Any] = {0: (0.0, 0.0, 0.0, 0.0), None: (0.5, 0.5, 0.5, 1.0)}
    for i in _classes_shown(labels):  # not every number up to the largest id
        color_dict[i] = (*(np.asarray(colors[i], dtype=float) / 255.0), 1.0)
    meta = {k_: _plain(v) for k_, v in labels.metadata.items()}
    meta.update(class_names=names[1:], colors=np.asarray(colors).tolist(), georef=labels.georef)
    return (
        np.asarray(labels.data),
        {
            "name": labels.name,
            "metadata": meta,
            "features": {"index": np.arange(k + 1), "class_name": names[: k + 1]},
            "colormap": DirectLabelColormap(color_dict=color_dict),
            **(map_transform(labels.georef) if map_coords else {}),
        },
        "labels",
    )
