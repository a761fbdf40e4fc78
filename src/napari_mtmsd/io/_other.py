"""``.npy`` (memory-mapped) and TIFF / GeoTIFF multi-band cubes and label maps.

GeoTIFF: georeferencing, GDAL per-band wavelengths / FWHM / bbl, GDAL_NODATA and the ENVI-domain
class names and lookup (as GDAL and EnMAP-Box write them) are read; class maps are written with
all of them plus a palette, so QGIS, ENVI and EnMAP-Box show them on the map with their legend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .._atomic import atomic_path
from ..errors import InputError
from . import _geotiff, _products
from ._georef import Georef
from ._limits import check_memory, check_stored
from ._types import Cube, LabelMap

NPY_MAGIC = b"\x93NUMPY"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) from the ``.npy`` header alone, or None when it is not one."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read is None:
                return None
            shape, _, dtype = read(f)
    except (OSError, ValueError):
        return None
    return tuple(shape), np.dtype(dtype)


def _npy(path: Path) -> np.ndarray:
    head = npy_header(path)
    if head is None:
        raise InputError(f"{path}: not a NumPy .npy file")
    shape, dtype = head
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: .npy dtype {dtype} is not real numeric")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InputError(
            f"{path}: cannot map the .npy data (shape {shape}, {dtype}): {e} (truncated file?)"
        ) from e


def band_last(data: Any, band_axis: int) -> Any:
    return data if band_axis in (2, -1) else np.moveaxis(data, band_axis, -1)


def guess_band_axis(shape: tuple[int, ...]) -> int:
    """The band axis of a 3-D array with no axis names: axis 0 when it is strictly the smallest
    (a band-first stack such as (200, 145, 145)... is ambiguous: (H, W, B) is the convention),
    else the last axis."""
    return 0 if shape[0] < shape[1] and shape[0] < shape[2] else 2


def read_npy_cube(path: Path) -> Cube:
    data = _npy(path)
    if data.ndim != 3:
        raise InputError(
            f"{path}: a cube is a 3-D array (rows, cols, bands), got shape {data.shape}"
        )
    axis = guess_band_axis(data.shape)
    meta = {"format": "npy", "path": str(path), "band_axis_in_file": axis}
    return Cube(data=band_last(data, axis), name=path.stem, metadata=meta)


def _labels_from_array(path: Path, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape([s for s in arr.shape if s != 1] or [1, 1])
    if arr.ndim != 2:
        raise InputError(f"{path}: a label map is a 2-D array (rows, cols), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
            raise InputError(f"{path}: a label map holds integers, found non-integer values")
        arr = arr.astype(np.int32)
    if arr.dtype.kind not in "biu":
        raise InputError(f"{path}: a label map holds integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.size and arr.min() < 0:
        raise InputError(f"{path}: label maps use 0 for unlabelled and 1..K, found {arr.min()}")
    return arr


def read_npy_labels(path: Path) -> LabelMap:
    arr = _labels_from_array(path, _npy(path))
    return LabelMap(data=arr, name=path.stem, metadata={"format": "npy", "path": str(path)})


def _tiff(path: Path) -> tuple[Any, str, dict]:
    """(array, axes, description metadata); memory-mapped when the file allows it."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            meta = dict(tif.shaped_metadata[0]) if tif.shaped_metadata else {}
            geo = tif.geotiff_metadata if tif.is_geotiff else None
            nbytes = int(series.size) * series.dtype.itemsize
        if geo:
            meta["geotiff"] = {k: v for k, v in geo.items() if isinstance(v, (int, float, str))}
        check_stored(path, f"the image ({'x'.join(map(str, series.shape))} {axes})", nbytes)
        try:
            data = tifffile.memmap(path, mode="r")
        except ValueError:  # compressed or tiled: read it
            check_memory(path, "the image", nbytes)
            data = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as e:
        raise InputError(f"{path}: cannot read this TIFF ({e})") from e
    return data, axes, meta


def tiff_band_axis(axes: str, shape: tuple[int, ...]) -> int:
    """The axis that is neither Y nor X when tifffile names them, else the smallest end axis."""
    if len(axes) == 3 and "Y" in axes and "X" in axes:
        return next(i for i, a in enumerate(axes) if a not in "YX")
    return guess_band_axis(shape)


def read_tiff_cube(path: Path) -> Cube:
    data, axes, desc = _tiff(path)
    if data.ndim != 3:
        raise InputError(
            f"{path}: a cube is a 3-D multi-band image, this TIFF has shape {data.shape} ({axes})"
        )
    axis = tiff_band_axis(axes, data.shape)
    wl = desc.get("wavelengths")
    meta: dict[str, Any] = {"format": "tiff", "path": str(path), "axes": axes}
    if "geotiff" in desc:
        meta["geotiff"] = desc["geotiff"]
    data = band_last(data, axis)
    n = data.shape[2]
    wl = np.asarray(wl, dtype=float) if wl is not None and len(wl) == n else None
    georef, gdal, nodata = tiff_geo(path)
    units = desc.get("wavelength_units")
    if wl is None and (wl := gdal.band_floats("wavelength", n)) is not None:
        units = gdal.item("wavelength_units") or _one(gdal.bands.get("wavelength_units"))
    if (fwhm := gdal.band_floats("fwhm", n)) is not None:
        meta["fwhm"] = fwhm
    bbl = gdal.band_floats("bbl", n)
    cube = Cube(
        data=data,
        wavelengths=wl,
        wavelength_units=units,
        ignore_value=nodata,
        name=path.stem,
        metadata=meta,
        georef=georef,
        bad_bands=None if bbl is None else bbl == 0,
    )
    return _products.with_sidecar_metadata(cube, path)


def _one(values: dict[int, str] | None) -> str | None:
    """The value every band shares, else None."""
    distinct = set((values or {}).values())
    return distinct.pop() if len(distinct) == 1 else None


def tiff_geo(path: Path) -> tuple[Georef | None, _geotiff.GdalMetadata, float | None]:
    """(georeferencing, GDAL metadata, GDAL_NODATA) of the first page: tags only."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            gdal = _geotiff.parse_gdal_metadata(_geotiff._tag(page, _geotiff.GDAL_METADATA))
            nodata = _geotiff.nodata(page)
            try:
                georef = _geotiff.read_georef(page)
            except InputError:  # unusable geo tags: the pixels still open, without a grid
                georef = None
            return georef, gdal, nodata
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as e:
        raise InputError(f"{path}: cannot read this TIFF's tags ({e})") from e


def read_tiff_labels(path: Path) -> LabelMap:
    data, _, desc = _tiff(path)
    arr = _labels_from_array(path, data)
    georef, gdal, _ = tiff_geo(path)
    names, colors = desc.get("class_names"), desc.get("colors")
    if names is None and (text := gdal.item("class names")) is not None:
        names = [n.strip() for n in text.strip("{} ").split(",")][1:]  # 0 is "Unclassified"
    if colors is None and (lookup := gdal.item("class lookup")) is not None:
        try:
            colors = np.asarray([int(float(v)) for v in lookup.strip("{} ").split(",")])
            colors = colors.reshape(-1, 3) if colors.size % 3 == 0 else None
        except ValueError:
            colors = None
    return LabelMap(
        data=arr,
        class_names=names,
        colors=np.asarray(colors, dtype=np.uint8) if colors is not None else None,
        name=path.stem,
        metadata={"format": "tiff", "path": str(path)},
        georef=georef,
    )


def tiff_info(path: Path) -> tuple[tuple[int, ...], str, dict] | None:
    """(shape, axes, description metadata) of the first series, without reading pixels."""
    try:
        with tifffile.TiffFile(path) as tif:
            s = tif.series[0]
            meta = dict(tif.shaped_metadata[0]) if tif.shaped_metadata else {}
            return tuple(s.shape), s.axes, meta
    except Exception:  # any unreadable TIFF is simply not ours
        return None


def write_npy_labels(path: Path, labels: LabelMap) -> Path:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(labels.data))
    return Path(path)


def write_tiff_labels(path: Path, labels: LabelMap) -> Path:
    """A 2-D GeoTIFF class map: palette, GDAL_NODATA = 0, the ENVI-domain ``class_names``,
    ``class_lookup``, ``classes`` and ``file_type`` GDAL metadata, CRS and geotransform; names
    and colours also ride in tifffile's JSON description."""
    meta: dict[str, Any] = {}
    if labels.class_names:
        meta["class_names"] = list(labels.class_names)
    if labels.colors is not None:
        meta["colors"] = np.asarray(labels.colors).tolist()
    json.dumps(meta)  # fail here, before writing, on anything tifffile could not store
    arr = np.asarray(labels.data)
    k = labels.n_classes
    names = ["Unclassified", *(labels.class_names or [])]
    names += [f"class {i}" for i in range(len(names), k + 1)]
    colors = np.asarray(labels.colors, dtype=np.uint8).reshape(-1, 3)[: k + 1]
    envi = {
        "class_lookup": "{" + ", ".join(str(int(v)) for v in colors.ravel()) + "}",
        "class_names": "{" + ", ".join(n.replace(",", " ") for n in names[: k + 1]) + "}",
        "classes": str(k + 1),
        "file_type": "ENVI Classification",
    }
    xml = _geotiff.gdal_metadata_xml({("ENVI", key): value for key, value in envi.items()})
    extra = [
        *_geotiff.georef_tags(labels.georef),
        (_geotiff.GDAL_METADATA, "s", 0, xml, True),
        (_geotiff.GDAL_NODATA, "s", 0, "0", True),
    ]
    kwargs: dict[str, Any] = {}
    dtype: Any = arr.dtype
    if k < 65536:
        dtype = np.uint8 if k < 256 else np.uint16
        cmap = np.zeros((3, 2 ** (8 * np.dtype(dtype).itemsize)), np.uint16)
        cmap[:, : len(colors)] = colors.T.astype(np.uint16) * 257
        kwargs = {"photometric": "palette", "colormap": cmap}
    with atomic_path(path, suffix=Path(path).suffix or ".tif") as tmp:
        tifffile.imwrite(
            tmp, tiles(arr, dtype), shape=arr.shape, dtype=dtype, tile=(TILE, TILE),
            metadata=meta, compression="zlib", extratags=extra, **kwargs,
        )  # fmt: skip
    return Path(path)


TILE = 256  # GeoTIFF tile side: maps are written a tile at a time, never converted whole


def tiles(data: Any, dtype: Any) -> Iterator[np.ndarray]:
    """The ``TILE`` x ``TILE`` tiles of a 2-D array (a memory map, say) in ``dtype``, row of
    tiles by row of tiles, as tifffile writes them (edge tiles are padded by tifffile)."""
    H, W = data.shape
    for r in range(0, H, TILE):
        for c in range(0, W, TILE):
            yield np.ascontiguousarray(data[r : r + TILE, c : c + TILE], dtype=dtype)


def write_tiff_raster(path: Path, data: np.ndarray, georef: Georef | None, nodata: float) -> Path:
    """A single-band float32 GeoTIFF (a confidence map) with georeferencing and GDAL_NODATA."""
    extra = [*_geotiff.georef_tags(georef), (_geotiff.GDAL_NODATA, "s", 0, f"{nodata:g}", True)]
    with atomic_path(path, suffix=Path(path).suffix or ".tif") as tmp:
        tifffile.imwrite(
            tmp, tiles(data, np.float32), shape=np.shape(data), dtype=np.float32,
            tile=(TILE, TILE), compression="zlib", extratags=extra, metadata=None,
        )  # fmt: skip
    return Path(path)
