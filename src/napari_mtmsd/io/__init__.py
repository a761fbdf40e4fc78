"""Qt-free, torch-free reading and writing of hyperspectral cubes and label maps.

Formats: ENVI (header + data file, any interleave, byte order and data type; memory-mapped),
MATLAB ``.mat`` v5 and v7.3, ``.npy`` (memory-mapped), TIFF / GeoTIFF, and the sensor products
EnMAP / DESIS (folder or SPECTRAL_IMAGE GeoTIFF), EMIT netCDF, PRISMA L2D ``.he5`` and NEON AOP
``.h5``. A cube is ``(H, W, B)`` and stays lazy (a memmap or a LazyArray), so multi-GB files open
at once. Cubes and label maps carry their georeferencing (``Georef``) through to the writers.

``load_input`` also takes the sample specs ``sample:indian_pines`` and
``sample:synthetic[?size=64&height=..&width=..&bands=50&classes=5&noise=0.02&seed=0]``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError
from . import _envi, _mat, _other, _products
from ._georef import Georef, orthorectify
from ._types import Cube, LabelMap, LazyArray, band_first, default_colors

__all__ = [
    "Cube",
    "Georef",
    "LabelMap",
    "LazyArray",
    "band_first",
    "default_colors",
    "describe",
    "detect_format",
    "load_input",
    "read_cube",
    "read_labels",
    "scratch_maps",
    "write_confidence",
    "write_cube",
    "write_labels",
    "write_prediction",
]

FORMATS = (
    "ENVI (.hdr + data file), MATLAB .mat (v5, v7.3), .npy, TIFF/GeoTIFF, an EnMAP or DESIS "
    "product folder, EMIT .nc, PRISMA L2D .he5, NEON AOP .h5"
)
TIFF_EXTS = (".tif", ".tiff")
HDF5_EXTS = {".nc": "emit", ".he5": "prisma", ".h5": "neon"}


def detect_format(path: str | os.PathLike) -> str | None:
    """'envi', 'mat', 'npy', 'tiff', 'folder' (EnMAP/DESIS), 'emit', 'prisma', 'neon' or None,
    from the name and the first bytes (HDF5: the group names) only."""
    path = Path(path)
    if path.is_dir():
        try:
            return "folder" if _products.folder_image(path) is not None else None
        except OSError:
            return None
    if not path.is_file():
        return None
    ext = path.suffix.lower()
    if ext in HDF5_EXTS:
        return _products.hdf5_product(path)
    if ext == ".hdr":
        return "envi" if _envi.is_header(path) else None
    if ext == ".mat":
        return "mat" if _mat.version(path) else None
    if ext == ".npy":
        return "npy" if _other.npy_header(path) else None
    if ext in TIFF_EXTS:
        try:
            with open(path, "rb") as f:
                return "tiff" if f.read(4) in _other.TIFF_MAGICS else None
        except OSError:
            return None
    if (ext in _envi.DATA_EXTS or ext == "") and _envi.find_header(path) is not None:
        return "envi"
    return None


def _checked(path: str | os.PathLike, key: str | None) -> tuple[Path, str]:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file")
    fmt = detect_format(path)
    if path.is_dir() and fmt is None:
        raise InputError(f"{path}: is a directory; give a cube or label file ({FORMATS})")
    if fmt is None:
        if path.suffix.lower() in _envi.DATA_EXTS:
            raise InputError(f"{path}: no ENVI header beside it (expected {path.stem}.hdr)")
        raise InputError(f"{path}: not a supported file ({FORMATS})")
    if key is not None and fmt != "mat":
        raise InputError(f"{path}: key={key!r} only applies to .mat files")
    return path, fmt


def read_cube(path: str | os.PathLike, key: str | None = None) -> Cube:
    """The cube in ``path``; ``key`` names the variable of a ``.mat`` file."""
    path, fmt = _checked(path, key)
    if fmt == "envi":
        return _envi.read_cube(path)
    if fmt == "mat":
        return _mat.read_cube(path, key)
    if fmt == "npy":
        return _other.read_npy_cube(path)
    if fmt == "folder":
        return _other.read_tiff_cube(_products.folder_image(path))  # type: ignore[arg-type]
    if fmt in HDF5_EXTS.values():
        reader = {"emit": _products.read_emit, "prisma": _products.read_prisma,
                  "neon": _products.read_neon}[fmt]  # fmt: skip
        try:
            return reader(path)
        except (KeyError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable {fmt.upper()} product ({e})") from e
    return _other.read_tiff_cube(path)


def read_labels(path: str | os.PathLike, key: str | None = None) -> LabelMap:
    """The label map in ``path`` (0 = unlabelled), with class names and colours when stored."""
    path, fmt = _checked(path, key)
    if fmt == "envi":
        return _envi.read_labels(path)
    if fmt == "mat":
        return _mat.read_labels(path, key)
    if fmt == "npy":
        return _other.read_npy_labels(path)
    if fmt != "tiff":
        raise InputError(f"{path}: a {fmt} product holds a cube, not a label map")
    return _other.read_tiff_labels(path)


def write_cube(path: str | os.PathLike, cube: Cube) -> Path:
    """ENVI ``.hdr`` + ``.img`` (BIP), wavelengths and band metadata kept; written atomically."""
    path = Path(path)
    if path.suffix.lower() not in {".hdr", "", *_envi.DATA_EXTS}:
        raise InputError(f"{path}: cubes are written as ENVI (.hdr or .img), not {path.suffix}")
    return _envi.write_cube(path, cube)


def write_labels(
    path: str | os.PathLike,
    labels: LabelMap | np.ndarray,
    class_names: list[str] | None = None,
    colors: np.ndarray | None = None,
) -> Path:
    """Write a label map by extension: ``.hdr``/``.img`` (ENVI Classification), ``.mat``,
    ``.tif``/``.tiff`` or ``.npy``; names and colours default to the LabelMap's."""
    path = Path(path)
    if not isinstance(labels, LabelMap):
        labels = LabelMap(data=np.asarray(labels), name=path.stem)
    names = class_names if class_names is not None else labels.class_names
    k = max(labels.n_classes, len(names or []))
    cols = colors if colors is not None else labels.colors
    if cols is None or len(np.asarray(cols).reshape(-1, 3)) < k + 1:
        base = default_colors(k)
        if cols is not None:
            given = np.asarray(cols, dtype=np.uint8).reshape(-1, 3)
            base[: len(given)] = given
        cols = base
    data, georef = np.asarray(labels.data), labels.georef
    ext = path.suffix.lower()
    if georef is not None and georef.is_swath and (ext in TIFF_EXTS or ext == ".hdr"
                                                   or ext in _envi.DATA_EXTS):  # fmt: skip
        data, georef = orthorectify(data, georef.glt), Georef(georef.transform, georef.crs)
    out = LabelMap(data=data, class_names=names, colors=cols, name=labels.name, georef=georef)
    if ext == ".hdr" or ext in _envi.DATA_EXTS:
        return _envi.write_labels(path, out)
    if ext == ".mat":
        return _mat.write_labels(path, out)
    if ext in TIFF_EXTS:
        return _other.write_tiff_labels(path, out)
    if ext == ".npy":
        return _other.write_npy_labels(path, out)
    raise InputError(f"{path}: label maps are written as .hdr/.img (ENVI), .mat, .tif or .npy")


# What each output format cannot keep of a class map, in one line (printed by the CLI).
NOT_KEPT = {
    "tif": "nothing (CRS, transform, palette, class names, no-data 0 are all written)",
    "hdr": "a sheared or mirrored transform (ENVI map info holds pixel sizes and a rotation)",
    "mat": "the georeferencing (CRS and transform): MATLAB files have no place for them",
    "npy": "the georeferencing, class names and colours: a .npy holds the bare array",
}


def write_confidence(
    path: str | os.PathLike, confidence: np.ndarray, georef: Georef | None
) -> Path:
    """A confidence map beside a class map: GeoTIFF (``.tif``) or ENVI (``.hdr``) float32 with
    the georeferencing and no-data 0 (swaths orthorectified), else ``.npy``."""
    path = Path(path)
    data = np.asarray(confidence, np.float32)
    if georef is not None and georef.is_swath and path.suffix.lower() in (*TIFF_EXTS, ".hdr"):
        data, georef = orthorectify(data, georef.glt), Georef(georef.transform, georef.crs)
    if path.suffix.lower() in TIFF_EXTS:
        return _other.write_tiff_raster(path, data, georef, nodata=0.0)
    if path.suffix.lower() == ".hdr":
        header = {"description": "confidence, written by napari-mtmsd", "data ignore value": 0,
                  **_envi.georef_header(georef)}  # fmt: skip
        return _envi.write(path, data[:, :, None], header)
    path = path.with_suffix(".npy")
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, data)
    return path


def write_prediction(
    out_dir: str | os.PathLike,
    stem: str,
    fmt: str,
    class_map: np.ndarray,
    confidence: np.ndarray,
    class_names: list[str] | None,
    colors: np.ndarray | None,
    georef: Georef | None,
) -> tuple[Path, Path, str | None]:
    """Class and confidence maps of one cube in ``fmt`` (tif, hdr, mat, npy), georeferenced
    where the format allows; returns their paths and a line saying what ``fmt`` did not keep."""
    out = Path(out_dir)
    labels = LabelMap(data=np.asarray(class_map), name=stem, georef=georef)
    classes = write_labels(out / f"{stem}_classes.{fmt}", labels, class_names, colors)
    conf_ext = fmt if fmt in ("tif", "hdr") else "npy"
    conf = write_confidence(out / f"{stem}_confidence.{conf_ext}", confidence, georef)
    note = None if fmt == "tif" else f".{fmt} does not keep {NOT_KEPT[fmt]}"
    return classes, conf, note


@contextlib.contextmanager
def scratch_maps(
    out_dir: str | os.PathLike, stem: str, shape: tuple[int, int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A zeroed (H, W) int32 class map and float32 confidence, memory-mapped from hidden files
    in ``out_dir`` (swept by the next write there should this process be killed), for a
    prediction to fill tile by tile before :func:`write_prediction` streams them into their
    format; removed on exit, so a large map is never held in memory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    maps: list[np.ndarray] = []
    try:
        for kind, dtype in (("classes", np.int32), ("confidence", np.float32)):
            prefix = f".tmp-{os.getpid()}-{stem}_{kind}-"
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=out)
            os.close(fd)
            paths.append(Path(tmp))
            maps.append(np.lib.format.open_memmap(tmp, "w+", dtype, tuple(shape)))
        yield maps[0], maps[1]
    finally:
        maps.clear()  # the maps are closed before their files go
        for path in paths:
            path.unlink(missing_ok=True)


def _parse_synthetic(spec: str) -> dict[str, Any]:
    _, _, query = spec.partition("?")
    types = {"size": int, "height": int, "width": int, "bands": int, "classes": int,
             "noise": float, "seed": int}  # fmt: skip
    kwargs: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if name not in types:
            raise InputError(f"{spec}: unknown parameter {name!r} (expected {', '.join(types)})")
        try:
            kwargs[name] = types[name](value)
        except ValueError as e:
            raise InputError(f"{spec}: {name}={value!r} is not a {types[name].__name__}") from e
    if "size" in kwargs:
        size = kwargs.pop("size")
        kwargs.setdefault("height", size)
        kwargs.setdefault("width", size)
    if "classes" in kwargs:
        kwargs["n_classes"] = kwargs.pop("classes")
    return kwargs


def load_input(spec: str | os.PathLike, key: str | None = None) -> tuple[Cube, LabelMap | None]:
    """A cube and, where the input has one, its label map, from a path or a sample spec.

    Sample specs: ``sample:indian_pines``; ``sample:synthetic`` with optional query parameters
    ``size`` (or ``height``, ``width``), ``bands``, ``classes``, ``noise``, ``seed``, e.g.
    ``sample:synthetic?size=64&bands=30&classes=5&seed=0``.
    """
    text = os.fspath(spec)
    if text.startswith("sample:"):
        from .. import samples

        name = text[len("sample:") :].partition("?")[0]
        if name == "indian_pines":
            return samples.load_indian_pines()
        if name == "synthetic":
            try:
                return samples.synthetic_scene(**_parse_synthetic(text))
            except ValueError as e:
                raise InputError(f"{text}: {e}") from e
        raise InputError(
            f"{text}: unknown sample (expected sample:indian_pines or sample:synthetic)"
        )
    cube = read_cube(text, key)
    labels = None
    if cube.metadata.get("format", "").startswith("mat"):
        try:
            labels = read_labels(text)
        except InputError:
            labels = None
        if labels is not None and labels.data.shape != cube.shape[:2]:
            labels = None
    return cube, labels


def _cube_info(cube: Cube) -> dict[str, Any]:
    wl = cube.wavelengths
    meta = cube.metadata
    info: dict[str, Any] = {
        "kind": "cube",
        "name": cube.name,
        "shape": list(cube.shape),
        "dtype": str(cube.data.dtype),
        "bands": cube.n_bands,
        "wavelength_range": [float(wl.min()), float(wl.max())] if wl is not None else None,
        "wavelength_units": cube.wavelength_units,
        "ignore_value": cube.ignore_value,
    }
    for k in ("format", "path", "key", "variables", "other_variables", "interleave", "layout",
              "reflectance_scale_factor", "default_bands", "georef_warning"):  # fmt: skip
        if k in meta:
            info[k] = meta[k]
    info["sensor"] = meta.get("sensor", "unknown")
    info.update(_georef_info(cube.georef))
    info["bad_bands"] = _bad_bands_info(cube)
    return info


SCAN_BYTES = 256 * 2**20  # info scans cubes up to this size for bands that hold no data


def _bad_bands_info(cube: Cube) -> str:
    """Declared bad bands (0-based), and empty bands when the cube is small enough to scan."""
    declared = [] if cube.bad_bands is None else np.flatnonzero(cube.bad_bands).tolist()
    text = f"{len(declared)} declared {declared}" if declared else "none declared"
    nbytes = int(np.prod(cube.shape)) * np.dtype(cube.data.dtype).itemsize
    if nbytes > SCAN_BYTES:
        return f"{text}; empty bands not scanned ({nbytes / 2**30:.1f} GiB cube)"
    empty = np.flatnonzero(~cube.good_bands() & cube.declared_good()).tolist()
    return f"{text}; {len(empty)} with no valid value {empty}" if empty else text


def _georef_info(georef: Georef | None) -> dict[str, Any]:
    if georef is None:
        return {"crs": None}
    epsg = georef.epsg() if georef.crs else None
    info: dict[str, Any] = {
        "crs": f"EPSG:{epsg} ({georef.crs_name()})" if epsg else georef.crs_name(),
        "pixel_size": list(georef.pixel_size) if georef.pixel_size else None,
    }
    if georef.rotation:
        info["rotation_deg"] = georef.rotation
    if georef.is_swath:
        info["geometry"] = f"swath; GLT grid {list(georef.glt.shape[1:])} (pixel size of the grid)"
    return info


def _labels_info(labels: LabelMap) -> dict[str, Any]:
    values, counts = np.unique(np.asarray(labels.data), return_counts=True)
    info: dict[str, Any] = {
        "kind": "labels",
        "name": labels.name,
        "shape": list(labels.data.shape),
        "dtype": str(labels.data.dtype),
        "classes": labels.n_classes,
        "class_names": labels.class_names,
        "labelled_pixels": int(counts[values > 0].sum()),
        "pixels_per_class": {int(v): int(c) for v, c in zip(values, counts, strict=True) if v > 0},
    }
    for k in ("format", "path", "key", "variables", "other_variables"):
        if k in labels.metadata:
            info[k] = labels.metadata[k]
    info.update(_georef_info(labels.georef))
    return info


def describe(path: str | os.PathLike, key: str | None = None) -> dict[str, Any]:
    """What ``napari-mtmsd info`` prints: shape, dtype, bands, wavelength range, variables.

    Reads headers and variable listings only, plus label maps (small) when the input is one.
    """
    text = os.fspath(path)
    if text.startswith("sample:"):
        cube, labels = load_input(text)
        info = _cube_info(cube)
        if labels is not None:
            info["labels"] = _labels_info(labels)
        return info
    p, fmt = _checked(text, key)
    try:
        cube = read_cube(p, key)
    except InputError as cube_error:
        try:
            return _labels_info(read_labels(p, key))
        except InputError:
            raise cube_error from None
    if "Classification" in cube.metadata.get("file_type", ""):
        return _labels_info(read_labels(p))
    info = _cube_info(cube)
    if fmt == "mat" and key is None:
        try:
            labels = read_labels(p)
            info["labels"] = _labels_info(labels)
        except InputError:
            pass
    return info
