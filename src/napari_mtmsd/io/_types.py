"""The in-memory forms of a cube and a label map, and a lazy transposing view of HDF5 arrays."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._progress import run
from ..errors import InputError
from ._georef import Georef

# Rows per chunk are chosen so that one chunk of a cube stays near this many bytes: valid_mask and
# writers then work on multi-GB memory-mapped cubes without loading them.
CHUNK_BYTES = 64 * 2**20
#: Bytes hashed between two progress records (a few hundredths of a second; the digest does not
#: depend on it).
HASH_BYTES = 16 * 2**20
#: Largest class id of a label map: every class gets a colour and a name, and napari draws a
#: Labels layer of up to 2**16 values without numba; far beyond any classification legend.
MAX_CLASS_ID = 65535


def check_class_ids(data: Any, name: str) -> None:
    """InputError unless ``data`` holds 0 (unlabelled) and class ids 1..MAX_CLASS_ID only."""
    arr = np.asarray(data)
    if not arr.size:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > MAX_CLASS_ID:
        bad = lo if lo < 0 else hi
        raise InputError(
            f"{name}: class id {bad} is out of range: label maps hold 0 (unlabelled) and class "
            f"ids 1..{MAX_CLASS_ID}"
        )


class LazyArray:
    """A read-only, axis-permuted view of an array-like (an ``h5py.Dataset``) read on indexing.

    h5py shows MATLAB arrays with their axes reversed; this view gives MATLAB's order without
    reading the data, and napari only ever reads the slices it displays.
    """

    def __init__(self, source: Any, axes: tuple[int, ...] | None = None):
        self.source = source
        self.axes = tuple(range(source.ndim))[::-1] if axes is None else tuple(axes)
        self.shape = tuple(int(source.shape[a]) for a in self.axes)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.nbytes = self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"

    def transpose(self, *axes: int) -> LazyArray:
        axes = tuple(axes[0]) if len(axes) == 1 and not isinstance(axes[0], int) else axes
        axes = axes or tuple(range(self.ndim))[::-1]
        return LazyArray(self.source, tuple(self.axes[a] for a in axes))

    @property
    def T(self) -> LazyArray:
        return self.transpose()

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(key) + 1)
            key = key[:i] + fill + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"too many indices for an array of shape {self.shape}")
        source_key: list[Any] = [slice(None)] * self.ndim
        after: list[Any] = []  # applied to the transposed result for what h5py cannot index
        kept: list[int] = []  # source axes still present, in output order
        for out_axis, k in enumerate(key):
            src = self.axes[out_axis]
            if isinstance(k, (int, np.integer)):
                n = self.shape[out_axis]
                if not -n <= k < n:
                    raise IndexError(f"index {k} out of range for axis of size {n}")
                source_key[src] = int(k) % n
                continue
            kept.append(src)
            if isinstance(k, slice) and (k.step is None or k.step > 0):
                source_key[src] = k
                after.append(slice(None))
            else:
                after.append(k)
        block = np.asarray(self.source[tuple(source_key)])
        order = sorted(kept)
        block = np.transpose(block, [order.index(a) for a in kept])
        if any(not (isinstance(a, slice) and a == slice(None)) for a in after):
            block = block[tuple(after)]
        return block

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


def advise(data: Any, advice: str) -> None:
    """``madvise`` the memory map under ``data`` ('random' or 'normal'); no-op for anything else.

    'random' stops the kernel's read-ahead, which pays for sequential reads but multiplies the
    cost of reading a BIL band (one short run per line) on a cold page cache. Not for BIP: there
    a band touches every page, and 4 KiB random reads made it slower, not faster.
    """
    base = data
    while base is not None and getattr(base, "_mmap", None) is None:
        base = getattr(base, "base", None)
    m = getattr(base, "_mmap", None)
    flag = getattr(mmap, {"random": "MADV_RANDOM", "normal": "MADV_NORMAL"}[advice], None)
    if m is not None and flag is not None:
        with contextlib.suppress(OSError, ValueError):
            m.madvise(flag)


def band_first(data: Any) -> Any:
    """(H, W, B) -> (B, H, W) without reading: a view of a memmap, ndarray or LazyArray."""
    if isinstance(data, LazyArray):
        return data.transpose(2, 0, 1)
    return np.moveaxis(data, 2, 0)


def row_chunks(shape: tuple[int, ...], itemsize: int) -> range:
    """Start rows of chunks of about ``CHUNK_BYTES`` each."""
    row_bytes = max(1, int(np.prod(shape[1:])) * itemsize)
    step = max(1, CHUNK_BYTES // row_bytes)
    return range(0, shape[0], step)


@dataclass
class Cube:
    """A hyperspectral cube ``(H, W, B)``; ``data`` may be a memmap or a LazyArray (not copied).

    ``bad_bands`` (B,) bool marks bands the product declares unusable (ENVI ``bbl``, EMIT
    ``good_wavelengths``, ...); bands that hold no valid value anywhere are found on the first
    ``valid_mask``/``good_bands`` call. Neither ever voids a pixel.
    """

    data: Any
    wavelengths: np.ndarray | None = None
    wavelength_units: str | None = None
    ignore_value: float | None = None
    name: str = "cube"
    metadata: dict = field(default_factory=dict)
    georef: Georef | None = None
    bad_bands: np.ndarray | None = None
    _scan: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _sha: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if getattr(self.data, "ndim", None) != 3:
            raise InputError(
                f"{self.name}: a cube must be 3-D (rows, cols, bands), got shape "
                f"{getattr(self.data, 'shape', None)}"
            )
        if min(self.data.shape) < 1:
            raise InputError(f"{self.name}: the cube is empty (shape {self.data.shape})")
        if self.wavelengths is not None:
            self.wavelengths = np.asarray(self.wavelengths, dtype=np.float64).ravel()
            if self.wavelengths.size != self.n_bands:
                raise InputError(
                    f"{self.name}: {self.wavelengths.size} wavelengths for {self.n_bands} bands"
                )
        if self.bad_bands is not None:
            self.bad_bands = np.asarray(self.bad_bands, dtype=bool).ravel()
            if self.bad_bands.size != self.n_bands:
                raise InputError(
                    f"{self.name}: {self.bad_bands.size} bad-band flags for {self.n_bands} bands"
                )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def n_bands(self) -> int:
        return int(self.data.shape[2])

    def wavelengths_nm(self) -> np.ndarray | None:
        """Wavelengths in nanometres when the units say micrometres (or values look like them)."""
        if self.wavelengths is None:
            return None
        units = (self.wavelength_units or "").strip().lower()
        if units in {"um", "µm", "micrometers", "micrometres", "microns", "micrometer"}:
            return self.wavelengths * 1000.0
        if units in {"", "unknown"} and self.wavelengths.max() < 30:
            return self.wavelengths * 1000.0
        return self.wavelengths

    def sha256(self) -> str:
        """Hash of the shape, dtype and values: identifies the cube a model was pretrained on
        and keys the feature cache (see :meth:`iter_sha256`)."""
        return run(self.iter_sha256())

    def iter_sha256(self) -> Generator[dict[str, Any], None, str]:
        """:meth:`sha256` as a job: the values are read and hashed ``HASH_BYTES`` at a time
        with a progress record (rows done) after each, so a multi-GB scene can be stopped. The
        digest is kept: like the validity mask, it takes the values as unchanged once read."""
        if self._sha is None:
            h = hashlib.sha256(f"{self.shape}|{np.dtype(self.data.dtype).str}|".encode())
            row_bytes = max(1, int(np.prod(self.shape[1:])) * self.data.dtype.itemsize)
            step = max(1, HASH_BYTES // row_bytes)
            for r0 in range(0, self.shape[0], step):
                h.update(np.ascontiguousarray(np.asarray(self.data[r0 : r0 + step])))
                yield {"stage": "hashing", "step": min(r0 + step, self.shape[0]),
                       "total": self.shape[0]}  # fmt: skip
            self._sha = h.hexdigest()
        return self._sha

    def valid_mask(self, bands: np.ndarray | None = None) -> np.ndarray:
        """(H, W) bool: False where a used band is NaN/Inf or every used band equals the ignore
        value. Used bands: ``bands`` (a (B,) bool mask) if given, else ``good_bands()``.

        Computed row-chunk by row-chunk, so it works on cubes larger than memory; the default
        result is cached. One pass finds the empty bands too; a second is needed only when an
        empty band holds NaN/Inf (an empty band of no-data values changes no pixel's verdict).
        """
        if bands is not None:
            return self._pixels(np.asarray(bands, dtype=bool), scan_bands=False)[0]
        if self._scan is None:
            declared = self.declared_good()
            mask, has_data, has_nonfinite = self._pixels(declared, scan_bands=True)
            good = declared & has_data
            if (declared & ~good & has_nonfinite).any():
                mask = self._pixels(good, scan_bands=False)[0]
            self._scan = (mask, good)
        return self._scan[0].copy()

    def declared_good(self) -> np.ndarray:
        return np.ones(self.n_bands, bool) if self.bad_bands is None else ~self.bad_bands

    def good_bands(self) -> np.ndarray:
        """(B,) bool: bands neither declared bad nor empty (no valid value anywhere)."""
        self.valid_mask()
        return self._scan[1].copy()  # type: ignore[index]

    def _pixels(self, used: np.ndarray, scan_bands: bool) -> tuple[np.ndarray, ...]:
        """(pixel mask over ``used`` bands, bands with a valid value, bands with NaN/Inf)."""
        h, w, b = self.shape
        mask = np.ones((h, w), dtype=bool)
        has_data, has_nonfinite = np.ones(b, dtype=bool), np.zeros(b, dtype=bool)
        floating = np.issubdtype(self.data.dtype, np.floating)
        if not floating and self.ignore_value is None:
            return mask, has_data, has_nonfinite
        has_data[:] = False
        if not used.any():
            mask[:] = False
            if not scan_bands:
                return mask, has_data, has_nonfinite
        chunks = row_chunks(self.shape, self.data.dtype.itemsize)
        for r0 in chunks:
            block = np.asarray(self.data[r0 : r0 + chunks.step])
            rows = slice(r0, r0 + block.shape[0])
            finite = np.isfinite(block) if floating else None
            empty = block == self.ignore_value if self.ignore_value is not None else None
            if scan_bands:
                ok = ~empty if finite is None else finite if empty is None else finite & ~empty
                has_data |= ok.reshape(-1, b).any(axis=0)
                if finite is not None:
                    has_nonfinite |= ~finite.reshape(-1, b).all(axis=0)
            if used.any():
                if finite is not None:
                    mask[rows] = _all_used(finite, used)
                if empty is not None:
                    mask[rows] &= ~_all_used(empty, used)
        return mask, has_data, has_nonfinite

    def crop(self, rows: slice, cols: slice) -> Cube:
        """``data[rows, cols]`` with the georeferencing moved along (contiguous slices)."""
        georef = None if self.georef is None else self.georef.crop(rows, cols, self.shape[:2])
        return Cube(
            data=self.data[rows, cols],
            wavelengths=self.wavelengths,
            wavelength_units=self.wavelength_units,
            ignore_value=self.ignore_value,
            name=self.name,
            metadata=dict(self.metadata),
            georef=georef,
            bad_bands=self.bad_bands,
        )


def _all_used(flags: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(h, w): ``flags`` (h, w, B) true in every used band, reduced over the runs of used
    bands as slices (boolean fancy indexing of the last axis copies, ~10x slower)."""
    edges = np.flatnonzero(np.diff(np.r_[0, used.astype(np.int8), 0]))
    out = np.ones(flags.shape[:2], dtype=bool)
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        out &= flags[:, :, lo:hi].all(axis=2)
    return out


def valid_pixels(block: np.ndarray, ignore_value: float | None) -> np.ndarray:
    """(h, w) bool for an (h, w, B) block: False where any band is NaN/Inf or every band equals
    the ignore value."""
    ok = np.ones(block.shape[:2], dtype=bool)
    if np.issubdtype(block.dtype, np.floating):
        ok &= np.isfinite(block).all(axis=2)
    if ignore_value is not None:
        ok &= ~(block == ignore_value).all(axis=2)
    return ok


@dataclass
class LabelMap:
    """A class map ``(H, W)``: 0 = unlabelled, classes 1..K; names and colours when known."""

    data: np.ndarray
    class_names: list[str] | None = None
    colors: np.ndarray | None = None  # (K + 1, 3) uint8, row 0 = background
    name: str = "labels"
    metadata: dict = field(default_factory=dict)
    georef: Georef | None = None

    def __post_init__(self) -> None:
        if getattr(self.data, "ndim", None) != 2:
            raise InputError(
                f"{self.name}: a label map must be 2-D (rows, cols), got shape "
                f"{getattr(self.data, 'shape', None)}"
            )
        if not np.issubdtype(self.data.dtype, np.integer):
            raise InputError(f"{self.name}: a label map must hold integers, got {self.data.dtype}")
        check_class_ids(self.data, self.metadata.get("path", self.name))
        if self.colors is not None:
            self.colors = np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

    def crop(self, rows: slice, cols: slice) -> LabelMap:
        georef = None if self.georef is None else self.georef.crop(rows, cols, self.data.shape)
        return LabelMap(
            data=self.data[rows, cols],
            class_names=self.class_names,
            colors=self.colors,
            name=self.name,
            metadata=dict(self.metadata),
            georef=georef,
        )

    @property
    def n_classes(self) -> int:
        """K: the largest label, or the number of class names when that is larger."""
        top = int(np.max(self.data)) if self.data.size else 0
        return max(top, len(self.class_names or []))


# A fixed, readable palette (Tableau 20 reordered for contrast between neighbours).
_PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232),
        (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148),
        (247, 182, 210), (219, 219, 141), (158, 218, 229), (127, 127, 127), (199, 199, 199),
    ],
    dtype=np.uint8,
)  # fmt: skip


def default_colors(n_classes: int) -> np.ndarray:
    """(K + 1, 3) uint8: black background, then the palette, then golden-angle hues."""
    out = np.zeros((n_classes + 1, 3), dtype=np.uint8)
    k = min(n_classes, len(_PALETTE))
    out[1 : k + 1] = _PALETTE[:k]
    if n_classes > k:
        import colorsys

        for i in range(k + 1, n_classes + 1):
            rgb = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9)
            out[i] = np.round(np.asarray(rgb) * 255)
    return out
