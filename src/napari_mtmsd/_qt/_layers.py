"""Adapters between napari layers and the core's data types (no method code here).

A cube layer is any Image layer with a band axis: three dimensions, one of them bands. The
reader puts the bands first (napari's convention for a stack, so the slider walks the bands);
plain arrays work too, with the band axis chosen in the widget. Output layers copy the cube
layer's spatial ``scale``, ``translate`` and ``rotate`` so they overlay it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_mtmsd.errors import InputError

if TYPE_CHECKING:
    import napari

    from napari_mtmsd.io import Cube


def is_cube_layer(layer: Any) -> bool:
    """An Image layer that can hold a cube: 3 dims, not RGB."""
    from napari.layers import Image

    return isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb


def guess_band_axis(layer: napari.layers.Image) -> int:
    """The band axis of a cube layer: from its metadata, its wavelengths, else the first axis."""
    meta = layer.metadata or {}
    if "band_axis" in meta:
        return int(meta["band_axis"]) % layer.ndim
    wavelengths = _wavelengths(meta)
    if wavelengths is not None:
        matches = [i for i, n in enumerate(layer.data.shape) if n == len(wavelengths)]
        if len(matches) == 1:
            return matches[0]
    return 0


def _wavelengths(meta: dict) -> np.ndarray | None:
    cube = meta.get("cube")
    values = getattr(cube, "wavelengths", None)
    if values is None:
        values = meta.get("wavelengths")
    return None if values is None else np.asarray(values, dtype=float)


def spatial_axes(band_axis: int) -> tuple[int, int]:
    return tuple(i for i in range(3) if i != band_axis)  # type: ignore[return-value]


def cube_from_layer(layer: napari.layers.Image, band_axis: int | None = None) -> Cube:
    """The layer's data as an ``io.Cube`` (H, W, B), keeping what the reader knew about it."""
    from napari_mtmsd.io import Cube

    if not is_cube_layer(layer):
        raise InputError(
            f"layer {layer.name!r} is not a cube: expected a 3-D, non-RGB Image layer "
            f"(rows, cols and a band axis), got shape {tuple(layer.data.shape)}"
        )
    axis = guess_band_axis(layer) if band_axis is None else int(band_axis)
    meta = dict(layer.metadata or {})
    known = meta.get("cube")
    dims = [int(n) for n in layer.data.shape]
    shape = (*(n for i, n in enumerate(dims) if i != axis), dims[axis])
    if known is not None and tuple(known.shape) == shape and meta.get("band_axis", 0) == axis:
        return known  # the reader's lazy cube: nothing is read or copied
    data = np.moveaxis(np.asarray(layer.data), axis, -1)
    wavelengths = _wavelengths(meta)
    if wavelengths is not None and len(wavelengths) != data.shape[-1]:
        wavelengths = None
    return Cube(
        data=data,
        wavelengths=wavelengths,
        wavelength_units=meta.get("wavelength_units"),
        ignore_value=meta.get("ignore_value"),
        name=layer.name,
        metadata={k: v for k, v in meta.items() if k != "cube"},
    )


def spatial_transform(layer: napari.layers.Image, band_axis: int) -> dict[str, Any]:
    """``scale``, ``translate`` and ``rotate`` of the cube layer's two spatial axes, for output
    layers, and the cube's georeferencing (in ``metadata``) so saved class maps keep it."""
    axes = spatial_axes(band_axis)
    out: dict[str, Any] = {
        "scale": tuple(float(layer.scale[i]) for i in axes),
        "translate": tuple(float(layer.translate[i]) for i in axes),
        "rotate": np.asarray(layer.rotate)[np.ix_(axes, axes)],
    }
    georef = (layer.metadata or {}).get("georef")
    if georef is not None:
        out["metadata"] = {"georef": georef}
    return out


def class_colormap(colors: np.ndarray) -> Any:
    """A direct label colormap: label i gets ``colors[i]`` (row 0 = background, transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, np.ndarray] = {
        None: np.zeros(4),
        0: np.zeros(4),
    }
    for i, rgb in enumerate(np.asarray(colors)[1:], start=1):
        color_dict[i] = np.append(np.asarray(rgb, dtype=float) / 255.0, 1.0)
    return DirectLabelColormap(color_dict=color_dict)


def class_features(names: list[str]) -> dict[str, list]:
    """Layer features so napari's status bar names the class under the cursor."""
    return {"index": list(range(len(names) + 1)), "class_name": ["unlabelled", *names]}


def show_labels(
    viewer: napari.Viewer,
    name: str,
    data: np.ndarray,
    names: list[str],
    colors: np.ndarray,
    transform: dict[str, tuple],
) -> napari.layers.Labels:
    """Add a Labels layer, or replace the data and colours of the one with that name."""
    from napari.layers import Labels

    colormap = class_colormap(colors)
    if name in viewer.layers and isinstance(viewer.layers[name], Labels):
        layer = viewer.layers[name]
        layer.data = data
        layer.colormap = colormap
        layer.features = class_features(names)
        layer.scale, layer.translate = transform["scale"], transform["translate"]
        layer.rotate = transform.get("rotate", np.eye(2))
        layer.metadata = {**layer.metadata, **transform.get("metadata", {})}
        return layer
    return viewer.add_labels(
        data, name=name, colormap=colormap, features=class_features(names), **transform
    )


def show_image(
    viewer: napari.Viewer, name: str, data: np.ndarray, transform: dict[str, tuple], **kwargs: Any
) -> napari.layers.Image:
    """Add an Image layer, or replace the data of the one with that name (same dims)."""
    from napari.layers import Image

    layer = viewer.layers[name] if name in viewer.layers else None
    if (
        isinstance(layer, Image)
        and layer.data.shape == data.shape
        and layer.rgb == kwargs.get("rgb", layer.rgb)
    ):
        layer.data = data
        for key, value in kwargs.items():
            if key not in ("rgb", "axis_labels"):
                setattr(layer, key, value)
        layer.scale, layer.translate, layer.rotate = _pad(
            transform, data.ndim - (2 + bool(layer.rgb))
        )
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    scale, translate, rotate = _pad(transform, data.ndim - (2 + bool(kwargs.get("rgb", False))))
    return viewer.add_image(
        data, name=name, scale=scale, translate=translate, rotate=rotate, **kwargs
    )


def _pad(transform: dict[str, Any], leading: int) -> tuple[tuple, tuple, np.ndarray]:
    """Spatial scale/translate/rotate with unit axes in front for extra (non-spatial) dims."""
    rotate = np.eye(2 + leading)
    rotate[leading:, leading:] = transform.get("rotate", np.eye(2))
    return (
        (1.0,) * leading + tuple(transform["scale"]),
        (0.0,) * leading + tuple(transform["translate"]),
        rotate,
    )


def show_points(
    viewer: napari.Viewer, name: str, coords: np.ndarray, transform: dict[str, Any], size: float
) -> napari.layers.Points:
    """Add a Points layer of (row, col) ``coords`` numbered 1.. (best first), or replace the
    points of the one with that name."""
    from napari.layers import Points

    coords = np.asarray(coords, float).reshape(-1, 2)
    text = {"string": "{rank}", "color": "yellow", "anchor": "upper_left", "size": 10}
    features = {"rank": np.arange(1, len(coords) + 1)}
    kwargs = {"scale": transform["scale"], "translate": transform["translate"]}
    if name in viewer.layers and isinstance(viewer.layers[name], Points):
        layer = viewer.layers[name]
        layer.data, layer.features = coords, features
        layer.text = text
        layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
        return layer
    return viewer.add_points(
        coords, name=name, size=size, features=features, text=text, symbol="ring",
        border_color="yellow", face_color="transparent", **kwargs,
    )  # fmt: skip


def band_label(layer: Any, band_axis: int, world_point: Any) -> str:
    """``"band 57: 1023.4 nm"`` for the band of ``layer`` at the viewer's ``world_point`` (napari's
    slider counts bands), or ``""`` without a cube layer or wavelengths."""
    wl = None if layer is None else _wavelengths(layer.metadata)
    if wl is None:
        return ""
    i = round(float(layer.world_to_data(world_point)[band_axis]))
    if not 0 <= i < len(wl):
        return ""
    units = layer.metadata.get("wavelength_units") or ""
    return f"band {i}: {wl[i]:g} {units}".strip()


def text_overlay(viewer: napari.Viewer) -> Any:
    """The viewer's text overlay (``canvas.overlays`` since napari 0.9, ``text_overlay`` before)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays["text"] if overlays is not None else viewer.text_overlay
