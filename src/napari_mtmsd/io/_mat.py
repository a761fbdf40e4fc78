"""MATLAB ``.mat`` v5 (scipy) and v7.3 (HDF5 via h5py), in MATLAB's (rows, cols[, bands]) order.

Variable choice: the largest 3-D numeric array is the cube; a 2-D integer-valued array with few
distinct values is a label map; unmixing benchmarks store ``Y`` (bands, pixels) with scalars
``nRow``, ``nCol`` and pixels in column-major order. ``key=`` overrides the choice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io as sio

from .._atomic import atomic_path
from ..errors import InputError
from ._limits import check_memory, check_stored
from ._types import MAX_CLASS_ID, Cube, LabelMap, LazyArray

_NUMERIC = {
    "double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32",
    "int64", "uint64",
}  # fmt: skip
# Companion variables our writer stores beside a label map: never candidates themselves.
_META_NAMES = {"class_names", "classnames", "colors", "colours", "class_lookup", "nrow", "ncol"}
MAX_LABEL_VALUES = 256  # "few distinct values": more than this is an image, not a class map
LAZY_BYTES = 256 * 2**20  # v7.3 arrays above this stay on disk behind a LazyArray


@dataclass(frozen=True)
class Var:
    name: str
    shape: tuple[int, ...]  # MATLAB order
    mclass: str

    @property
    def numeric(self) -> bool:
        return self.mclass in _NUMERIC

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __str__(self) -> str:
        return f"{self.name} {'x'.join(map(str, self.shape))} {self.mclass}"


def version(path: Path) -> int | None:
    """5 or 73 from the 128-byte MAT header text; None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return None
    if head.startswith(b"MATLAB 7.3 MAT-file") or (
        head.startswith(b"MATLAB") and head[512:520] == b"\x89HDF\r\n\x1a\n"
    ):
        return 73
    if head.startswith(b"MATLAB 5.0 MAT-file") or head.startswith(b"MATLAB 5"):
        return 5
    return None


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot open this MATLAB v7.3 (HDF5) file ({e})") from e


def _h5_class(ds: h5py.Dataset) -> str:
    c = ds.attrs.get("MATLAB_class", b"")
    c = c.decode() if isinstance(c, bytes) else str(c)
    if not c:  # plain HDF5 datasets in a .mat: judge by dtype
        c = ds.dtype.name if ds.dtype.kind in "iuf" else "other"
        c = {"float64": "double", "float32": "single"}.get(c, c)
    if ds.attrs.get("MATLAB_empty", 0):
        c = "empty"
    return c


def list_variables(path: Path) -> list[Var]:
    """Names, MATLAB shapes and classes, without reading the arrays."""
    ver = version(path)
    if ver == 73:
        with _open_h5(path) as f:
            return [
                Var(name, tuple(int(s) for s in ds.shape[::-1]), _h5_class(ds))
                for name, ds in f.items()
                if isinstance(ds, h5py.Dataset) and not name.startswith("#")
            ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [Var(n, tuple(int(s) for s in sh), c) for n, sh, c in sio.whosmat(str(path))]
    except Exception as e:
        raise InputError(f"{path}: cannot read this MATLAB file ({e})") from e


def _checked_h5(path: Path, ds: h5py.Dataset, lazy: bool) -> None:
    """InputError for data stored outside the file, or a declared size the file cannot hold."""
    what = f"variable {ds.name.lstrip('/')!r}"
    if ds.is_virtual or ds.external:
        where = "virtual dataset" if ds.is_virtual else "external storage"
        raise InputError(
            f"{path}: {what} points outside the file ({where}); only data inside the file is read"
        )
    nbytes = int(ds.size) * ds.dtype.itemsize
    check_stored(path, what, nbytes, ds.id.get_storage_size())
    if not (lazy and nbytes > LAZY_BYTES):
        check_memory(path, what, nbytes)


def _checked_v5(path: Path, name: str) -> None:
    v = next((v for v in list_variables(path) if v.name == name), None)
    if v is not None and v.numeric:
        item = {"double": 8, "int64": 8, "uint64": 8, "single": 4, "int32": 4, "uint32": 4}
        nbytes = v.size * item.get(v.mclass, 2)
        check_stored(path, f"variable {name!r}", nbytes)
        check_memory(path, f"variable {name!r}", nbytes)


def _load(path: Path, name: str, lazy: bool = False) -> Any:
    """One variable in MATLAB order (v7.3 large arrays as a LazyArray keeping the file open)."""
    if version(path) == 73:
        f = _open_h5(path)
        ds = f[name]
        try:
            _checked_h5(path, ds, lazy)
        except InputError:
            f.close()
            raise
        if lazy and ds.size * ds.dtype.itemsize > LAZY_BYTES:
            return LazyArray(ds)  # the dataset keeps the file open while the array lives
        try:
            return np.asarray(ds[()]).T
        finally:
            f.close()
    _checked_v5(path, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sio.loadmat(str(path), variable_names=[name], squeeze_me=False)[name]
    except Exception as e:
        raise InputError(f"{path}: cannot read variable {name!r} ({e})") from e


def _listing(path: Path, variables: list[Var]) -> str:
    return "; ".join(map(str, variables)) or "no variables"


def _pick_key(path: Path, variables: list[Var], key: str) -> Var:
    for v in variables:
        if v.name == key:
            return v
    raise InputError(f"{path}: no variable {key!r}; variables: {_listing(path, variables)}")


def _scalar(path: Path, variables: list[Var], names: set[str]) -> int | None:
    for v in variables:
        if v.name.lower() in names and v.numeric and v.size == 1:
            return int(np.asarray(_load(path, v.name)).ravel()[0])
    return None


def _unmixing_cube(path: Path, variables: list[Var], y: Var) -> np.ndarray | None:
    """``Y`` (bands, pixels) + ``nRow``, ``nCol`` -> (nRow, nCol, bands), column-major pixels."""
    n_row = _scalar(path, variables, {"nrow", "nrows"})
    n_col = _scalar(path, variables, {"ncol", "ncols"})
    if n_row is None or n_col is None or len(y.shape) != 2:
        return None
    bands, pixels = y.shape
    if n_row * n_col != pixels:
        raise InputError(
            f"{path}: {y.name} has {pixels} pixels but nRow x nCol = {n_row} x {n_col} = "
            f"{n_row * n_col}"
        )
    data = np.asarray(_load(path, y.name))  # (bands, pixels)
    return data.T.reshape(n_col, n_row, bands).transpose(1, 0, 2)


def _cube_candidates(variables: list[Var]) -> list[Var]:
    cands = [v for v in variables if v.numeric and len(v.shape) == 3 and min(v.shape) > 1]
    return sorted(cands, key=lambda v: -v.size)


def _inventory(path: Path) -> tuple[list[Var], dict[str, Any]]:
    """The file's variables (none: InputError) and the metadata every layer from it carries."""
    variables = list_variables(path)
    if not variables:
        raise InputError(f"{path}: the MATLAB file holds no variables")
    meta: dict[str, Any] = {"format": f"mat-v{'7.3' if version(path) == 73 else '5'}"}
    meta["path"] = str(path)
    meta["variables"] = [str(v) for v in variables]
    return variables, meta


def read_cube(path: Path, key: str | None = None) -> Cube:
    variables, meta = _inventory(path)
    cands = _cube_candidates(variables)
    if key is not None:
        chosen = _pick_key(path, variables, key)
    elif cands:
        chosen = cands[0]
    else:
        chosen = next((v for v in variables if v.name.lower() == "y" and len(v.shape) == 2), None)
    if chosen is None:
        raise InputError(
            f"{path}: no hyperspectral cube (a 3-D numeric array, or Y with nRow and nCol) among "
            f"the variables: {_listing(path, variables)}"
        )
    if not chosen.numeric:
        raise InputError(f"{path}: variable {chosen.name!r} is {chosen.mclass}, not numeric")
    if len(chosen.shape) == 3:
        data = _load(path, chosen.name, lazy=True)
    elif len(chosen.shape) == 2 and (data := _unmixing_cube(path, variables, chosen)) is not None:
        meta["layout"] = "Y (bands, pixels) reshaped with nRow, nCol in column-major order"
    else:
        raise InputError(
            f"{path}: variable {chosen.name!r} has shape {chosen.shape}; a cube is (rows, cols, "
            f"bands), or Y (bands, pixels) with scalars nRow and nCol"
        )
    meta["key"] = chosen.name
    others = [v.name for v in cands if v.name != chosen.name]
    if others:
        meta["other_variables"] = others
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{path}: variable {chosen.name!r} has dtype {data.dtype}, not real")
    wl = _wavelengths(path, variables, data.shape[2])
    return Cube(data=data, wavelengths=wl, name=f"{path.stem}", metadata=meta)


def _wavelengths(path: Path, variables: list[Var], n_bands: int) -> np.ndarray | None:
    for v in variables:
        if v.name.lower() in {"wavelength", "wavelengths", "wl", "lambda"} and v.size == n_bands:
            try:  # text or cells in place of numbers: the cube is still good, without wavelengths
                return np.asarray(_load(path, v.name), dtype=np.float64).ravel()
            except (ValueError, TypeError):
                return None
    return None


def _as_labels(arr: np.ndarray, max_values: int = MAX_LABEL_VALUES) -> np.ndarray | None:
    """An integer copy if ``arr`` looks like a class map (at most ``max_values`` distinct
    non-negative integers), else None."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or min(arr.shape) < 2 or arr.dtype.kind not in "biuf":
        return None
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            return None
    if arr.size and arr.min() < 0:
        return None
    values = np.unique(arr)
    if values.size > max_values or (values.size and values.max() > np.iinfo(np.int32).max):
        return None
    top = int(values.max()) if values.size else 0
    return arr.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)


def _strings(value: Any) -> list[str]:
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return [str(s).strip() for s in arr.ravel()]
    if arr.dtype == object:
        return [s for x in arr.ravel() for s in _strings(x)]
    if arr.dtype.kind == "u" and arr.ndim == 2:  # v7.3 char arrays are uint16 code points
        return ["".join(map(chr, row)).strip() for row in arr]
    return []


def _class_names(path: Path, variables: list[Var]) -> list[str] | None:
    for v in variables:
        if v.name.lower() in {"class_names", "classnames"}:
            if version(path) == 73:
                with _open_h5(path) as f:
                    ds = f[v.name]
                    _checked_h5(path, ds, lazy=False)
                    if ds.dtype == h5py.ref_dtype:
                        refs = [f[r] for r in np.asarray(ds).ravel()]
                        for ref in refs:
                            _checked_h5(path, ref, lazy=False)
                        return [_strings(np.asarray(ref).T)[0] for ref in refs]
                    return _strings(np.asarray(ds).T)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = sio.loadmat(str(path), variable_names=[v.name], squeeze_me=True)
            return _strings(d[v.name]) or None
    return None


def _colors(path: Path, variables: list[Var]) -> np.ndarray | None:
    for v in variables:
        if v.name.lower() in {"colors", "colours", "class_lookup"} and v.numeric:
            arr = np.asarray(_load(path, v.name))
            if arr.ndim == 2 and arr.shape[1] == 3:
                return np.clip(arr, 0, 255).astype(np.uint8)
    return None


def read_labels(path: Path, key: str | None = None) -> LabelMap:
    variables, meta = _inventory(path)
    if key is not None:
        v = _pick_key(path, variables, key)
        arr = _as_labels(_load(path, v.name), MAX_CLASS_ID + 1) if v.numeric else None
        if arr is None:
            raise InputError(
                f"{path}: variable {key!r} ({v}) is not a label map (a 2-D array of "
                "non-negative integers)"
            )
        found = [(v, arr)]
    else:
        found = []
        for v in sorted(variables, key=lambda v: -v.size):
            if v.numeric and len(v.shape) == 2 and v.name.lower() not in _META_NAMES:
                # ``labels`` is what our writer names it: any number of classes
                most = MAX_CLASS_ID + 1 if v.name == "labels" else MAX_LABEL_VALUES
                arr = _as_labels(_load(path, v.name), most)
                if arr is not None:
                    found.append((v, arr))
        if not found:
            raise InputError(
                f"{path}: no label map (a 2-D array of at most {MAX_LABEL_VALUES} distinct "
                f"non-negative integers) among the variables: {_listing(path, variables)}"
            )
    v, arr = found[0]
    meta["key"] = v.name
    if len(found) > 1:
        meta["other_variables"] = [w.name for w, _ in found[1:]]
    return LabelMap(
        data=arr,
        class_names=_class_names(path, variables),
        colors=_colors(path, variables),
        name=f"{path.stem}",
        metadata=meta,
    )


def write_labels(path: Path, labels: LabelMap) -> Path:
    """v5 ``.mat`` with ``labels``, ``class_names`` (cell of char) and ``colors`` (K + 1, 3)."""
    out: dict[str, Any] = {"labels": np.asarray(labels.data)}
    if labels.class_names:
        out["class_names"] = np.asarray(labels.class_names, dtype=object)
    if labels.colors is not None:
        out["colors"] = np.asarray(labels.colors, dtype=np.uint8)
    with atomic_path(path, suffix=".mat") as tmp:
        sio.savemat(str(tmp), out, do_compression=True)
    return Path(path)
