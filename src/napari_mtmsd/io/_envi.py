"""ENVI cubes and classification maps through ``spectral``, memory-mapped."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import spectral.io.envi as envi

from .._atomic import atomic_path
from ..errors import InputError
from ._georef import Georef, from_envi, to_envi
from ._types import Cube, LabelMap, advise, row_chunks

# Data-file extensions looked for beside a header, in this order (then without extension).
DATA_EXTS = (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".bin")
_MANDATORY = ("samples", "lines", "bands", "data type", "interleave", "byte order")


def is_header(path: Path) -> bool:
    """A file whose first line is ``ENVI`` (napari's builtin reader claims every ``*.hdr``)."""
    try:
        with open(path, "rb") as f:
            first = f.read(64).splitlines()
    except OSError:
        return False
    return bool(first) and first[0].strip() == b"ENVI"


def find_header(data_path: Path) -> Path | None:
    """The header beside a data file: ``x.img`` -> ``x.hdr`` or ``x.img.hdr``."""
    for cand in (
        data_path.with_suffix(".hdr"),
        data_path.with_suffix(".HDR"),
        data_path.with_name(data_path.name + ".hdr"),
        data_path.with_name(data_path.name + ".HDR"),
    ):
        if cand != data_path and cand.is_file() and is_header(cand):
            return cand
    return None


def find_data(hdr: Path) -> Path:
    stem = hdr.with_suffix("")
    exts = [e for ext in DATA_EXTS for e in (ext, ext.upper())] + [""]
    for ext in exts:
        cand = stem.with_name(stem.name + ext)
        if cand.is_file():
            return cand
    raise InputError(
        f"{hdr}: no ENVI data file beside the header (looked for {stem.name} with "
        f"{', '.join(DATA_EXTS)} or no extension)"
    )


def resolve(path: Path) -> tuple[Path, Path]:
    """(header, data file) for a header or a data file."""
    if path.suffix.lower() == ".hdr":
        if not is_header(path):
            raise InputError(f"{path}: not an ENVI header (its first line is not 'ENVI')")
        return path, find_data(path)
    hdr = find_header(path)
    if hdr is None:
        raise InputError(f"{path}: no ENVI header beside it (expected {path.stem}.hdr)")
    return hdr, path


def read_header(hdr: Path) -> dict:
    try:
        h = envi.read_envi_header(str(hdr))
    except Exception as e:  # spectral raises several types for malformed headers
        raise InputError(f"{hdr}: cannot parse the ENVI header ({e})") from e
    missing = [k for k in _MANDATORY if k not in h]
    if missing:
        raise InputError(f"{hdr}: the ENVI header lacks {', '.join(missing)}")
    if "library" in str(h.get("file type", "")).lower():
        raise InputError(f"{hdr}: an ENVI spectral library (a table of spectra), not an image")
    return h


def _int(h: dict, key: str, hdr: Path, default: int | None = None) -> int:
    if key not in h and default is not None:
        return default
    try:
        return int(str(h[key]).strip())
    except ValueError as e:
        raise InputError(f"{hdr}: header field '{key}' = {h[key]!r} is not an integer") from e


def _floats(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def check(hdr: Path, data: Path, h: dict) -> tuple[int, int, int]:
    """Validate sizes, data type and file length; return (lines, samples, bands)."""
    lines, samples, bands = (_int(h, k, hdr) for k in ("lines", "samples", "bands"))
    if min(lines, samples, bands) < 1:
        raise InputError(
            f"{hdr}: lines/samples/bands must be positive, got {lines}/{samples}/{bands}"
        )
    code = str(h["data type"]).strip()
    if code not in envi.envi_to_dtype:
        raise InputError(
            f"{hdr}: unknown ENVI data type {code!r} (expected one of "
            f"{', '.join(sorted(envi.envi_to_dtype, key=int))})"
        )
    dtype = np.dtype(envi.envi_to_dtype[code])
    if dtype.kind == "c":
        raise InputError(f"{hdr}: complex data (ENVI data type {code}) is not a spectral cube")
    if str(h["interleave"]).strip().lower() not in {"bsq", "bil", "bip"}:
        raise InputError(
            f"{hdr}: unknown interleave {h['interleave']!r} (expected bsq, bil or bip)"
        )
    if _int(h, "byte order", hdr) not in (0, 1):
        raise InputError(f"{hdr}: byte order must be 0 or 1, got {h['byte order']!r}")
    offset = _int(h, "header offset", hdr, default=0)
    expected = offset + lines * samples * bands * dtype.itemsize
    actual = os.path.getsize(data)
    if actual < expected:
        raise InputError(
            f"{data}: the data file is too short: the header ({lines} lines x {samples} samples"
            f" x {bands} bands of {dtype.name}, offset {offset}) needs {expected} bytes, found "
            f"{actual}"
            " (truncated, or the header sizes are wrong)"
        )
    if actual > expected:
        raise InputError(
            f"{data}: the data file has {actual} bytes but the header ({lines} x {samples} x "
            f"{bands} of {dtype.name}, offset {offset}) describes {expected}: they do not match"
        )
    return lines, samples, bands


def open_memmap(hdr: Path, data: Path) -> tuple[dict, np.ndarray]:
    """Header dict and a read-only (lines, samples, bands) memmap view, for any interleave."""
    h = read_header(hdr)
    check(hdr, data, h)
    try:
        img = envi.open(str(hdr), str(data))
        mm = img.open_memmap(interleave="bip", writable=False)
    except Exception as e:
        raise InputError(f"{hdr}: cannot open the ENVI data file {data.name} ({e})") from e
    if str(h["interleave"]).strip().lower() == "bil":
        # A BIL band is one short run per line: read-ahead around each page fault would pull in
        # ~100x more than the band (a cold band of a 2 GB cube: 1.3 s -> ~0.1 s).
        advise(mm, "random")
    return h, mm


def header_metadata(h: dict, hdr: Path, data: Path) -> dict:
    meta: dict[str, Any] = {"format": "envi", "path": str(hdr), "data_file": str(data)}
    meta["interleave"] = str(h["interleave"]).lower()
    meta["byte_order"] = int(str(h["byte order"]))
    meta["data_type"] = int(str(h["data type"]))
    if (fwhm := _floats(h.get("fwhm"))) is not None:
        meta["fwhm"] = fwhm
    if "band names" in h:
        meta["band_names"] = [str(b) for b in h["band names"]]
    if "default bands" in h:
        with contextlib.suppress(TypeError, ValueError):
            meta["default_bands"] = [int(float(b)) - 1 for b in h["default bands"]]
    for key in ("reflectance scale factor", "data ignore value"):
        if key in h:
            with contextlib.suppress(TypeError, ValueError):
                meta[key.replace(" ", "_")] = float(h[key])
    for key in ("description", "sensor type", "file type"):
        if key in h:
            meta[key.replace(" ", "_")] = str(h[key]).strip()
    return meta


def header_georef(h: dict, meta: dict) -> Georef | None:
    """``map info`` + ``coordinate system string``; a malformed one is reported in
    ``meta["georef_warning"]`` and dropped, so the pixels still open."""
    try:
        return from_envi(h.get("map info"), h.get("coordinate system string"))
    except InputError as e:
        meta["georef_warning"] = f"georeferencing ignored: {e}"
        return None


def bad_bands(h: dict, n_bands: int) -> np.ndarray | None:
    """ENVI's ``bbl`` (1 = good, 0 = bad) as a bad-band mask; None when absent or malformed."""
    bbl = _floats(h.get("bbl"))
    return None if bbl is None or bbl.size != n_bands else bbl == 0


def read_cube(path: Path) -> Cube:
    hdr, data = resolve(path)
    h, mm = open_memmap(hdr, data)
    meta = header_metadata(h, hdr, data)
    wl = _floats(h.get("wavelength"))
    if wl is not None and wl.size != mm.shape[2]:
        meta["header_warning"] = f"{wl.size} wavelengths for {mm.shape[2]} bands: ignored"
        wl = None
    return Cube(
        data=mm,
        wavelengths=wl,
        wavelength_units=h.get("wavelength units"),
        ignore_value=meta.get("data_ignore_value"),
        name=hdr.stem,
        metadata=meta,
        georef=header_georef(h, meta),
        bad_bands=bad_bands(h, mm.shape[2]),
    )


def read_labels(path: Path) -> LabelMap:
    hdr, data = resolve(path)
    h, mm = open_memmap(hdr, data)
    if mm.shape[2] != 1:
        raise InputError(f"{hdr}: a label map has 1 band, this file has {mm.shape[2]}")
    arr = np.asarray(mm[:, :, 0])
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr)) and arr.min() >= 0):
            raise InputError(f"{hdr}: a label map holds non-negative integers, found {arr.dtype}")
        arr = arr.astype(np.int32)
    names = [str(n).strip() for n in h.get("class names", [])] or None
    lookup = h.get("class lookup")
    colors = None
    if lookup is not None:
        with contextlib.suppress(TypeError, ValueError):
            vals = np.asarray([int(float(v)) for v in lookup])
            if vals.size % 3 == 0:
                colors = np.clip(vals, 0, 255).astype(np.uint8).reshape(-1, 3)
    meta = header_metadata(h, hdr, data)
    return LabelMap(
        data=arr.astype(arr.dtype.newbyteorder("="), copy=False),
        class_names=names[1:] if names else None,  # ENVI's class 0 is "Unclassified"
        colors=colors,
        name=hdr.stem,
        metadata=meta,
        georef=header_georef(h, meta),
    )


def output_paths(path: Path) -> tuple[Path, Path]:
    """(header, data file) to write for ``x.hdr``, ``x.img`` (or another data extension), ``x``."""
    if path.suffix.lower() == ".hdr":
        return path, path.with_suffix(".img")
    if path.suffix.lower() in DATA_EXTS:
        return path.with_suffix(".hdr"), path
    return path.with_name(path.name + ".hdr"), path.with_name(path.name + ".img")


def _envi_dtype(dtype: np.dtype) -> tuple[np.dtype, int]:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    elif dtype.kind == "f" and dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    code = envi.dtype_to_envi.get(dtype.newbyteorder("=").char)
    if code is None:
        raise InputError(f"cannot write {dtype} data to ENVI")
    return dtype.newbyteorder("<"), int(code)


def write(path: Path, data: Any, header: dict, dtype: Any = None) -> Path:
    """Write ``data`` (H, W, B) as little-endian BIP plus a header, both atomically, converted
    to ``dtype`` (default its own) a row chunk at a time.

    Both go to temp names; the data file is renamed first and the header last, so a reader never
    finds a header whose data is missing or partial.
    """
    hdr, img = output_paths(Path(path))
    dtype, code = _envi_dtype(data.dtype if dtype is None else dtype)
    lines, samples, bands = (int(s) for s in data.shape)
    h = {
        "samples": samples,
        "lines": lines,
        "bands": bands,
        "header offset": 0,
        "data type": code,
        "interleave": "bip",
        "byte order": 0,
        **header,
    }
    with atomic_path(hdr) as tmp_hdr, atomic_path(img) as tmp_img:
        with open(tmp_img, "wb") as f:
            chunks = row_chunks(data.shape, dtype.itemsize)
            for r0 in chunks:
                np.ascontiguousarray(np.asarray(data[r0 : r0 + chunks.step]), dtype=dtype).tofile(
                    f
                )
        envi.write_envi_header(str(tmp_hdr), h)
    return hdr


def write_cube(path: Path, cube: Cube) -> Path:
    meta = cube.metadata
    header: dict[str, Any] = {"description": f"{cube.name}, written by napari-mtmsd"}
    if cube.wavelengths is not None:
        header["wavelength"] = [f"{w:g}" for w in cube.wavelengths]
    if cube.wavelength_units:
        header["wavelength units"] = cube.wavelength_units
    if meta.get("fwhm") is not None:
        header["fwhm"] = [f"{w:g}" for w in np.asarray(meta["fwhm"]).ravel()]
    if meta.get("band_names"):
        header["band names"] = list(meta["band_names"])
    if meta.get("default_bands"):
        header["default bands"] = [int(b) + 1 for b in meta["default_bands"]]
    if meta.get("reflectance_scale_factor") is not None:
        header["reflectance scale factor"] = meta["reflectance_scale_factor"]
    if cube.ignore_value is not None:
        header["data ignore value"] = f"{cube.ignore_value:g}"
    if cube.bad_bands is not None:
        header["bbl"] = [int(not bad) for bad in cube.bad_bands]
    return write(path, cube.data, {**header, **georef_header(cube.georef)})


def georef_header(georef: Georef | None) -> dict[str, str]:
    """ENVI map fields for an affine grid; nothing for none (a swath is orthorectified first)."""
    if georef is None or georef.transform is None or georef.glt is not None:
        return {}
    return to_envi(georef)


def write_labels(path: Path, labels: LabelMap) -> Path:
    arr = np.asarray(labels.data)
    k = labels.n_classes
    dtype = np.uint8 if k < 256 else np.uint16 if k < 65536 else np.int32
    names = ["Unclassified", *(labels.class_names or [f"class {i}" for i in range(1, k + 1)])]
    header = {
        "description": f"{labels.name}, written by napari-mtmsd",
        "file type": "ENVI Classification",
        "classes": k + 1,
        "class names": names[: k + 1],
        "class lookup": [int(v) for v in np.asarray(labels.colors).reshape(-1)[: 3 * (k + 1)]],
        **georef_header(labels.georef),
    }
    return write(path, arr[:, :, None], header, dtype)
