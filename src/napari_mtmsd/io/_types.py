"""The in-memory forms of a cube and a label map, and a lazy transposing view of HDF5 arrays."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError

# Rows per chunk are chosen so that one chunk of a cube stays near this many bytes: valid_mask and
# writers then work on multi-GB memory-mapped cubes without loading them.
CHUNK_BYTES = 64 * 2**20


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
    """A hyperspectral cube ``(H, W, B)``; ``data`` may be a memmap or a LazyArray (not copied)."""

    data: Any
    wavelengths: np.ndarray | None = None
    wavelength_units: str | None = None
    ignore_value: float | None = None
    name: str = "cube"
    metadata: dict = field(default_factory=dict)

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
        """Hash of the shape, dtype and values, read a row chunk at a time: identifies the cube a
        model was pretrained on and keys the feature cache."""
        h = hashlib.sha256(f"{self.shape}|{np.dtype(self.data.dtype).str}|".encode())
        chunks = row_chunks(self.shape, self.data.dtype.itemsize)
        for r0 in chunks:
            h.update(np.ascontiguousarray(np.asarray(self.data[r0 : r0 + chunks.step])).tobytes())
        return h.hexdigest()

    def valid_mask(self) -> np.ndarray:
        """(H, W) bool: False where any band is NaN/Inf or every band equals the ignore value.

        Computed row-chunk by row-chunk, so it works on cubes larger than memory.
        """
        h, w, _ = self.shape
        mask = np.ones((h, w), dtype=bool)
        floating = np.issubdtype(self.data.dtype, np.floating)
        if not floating and self.ignore_value is None:
            return mask
        chunks = row_chunks(self.shape, self.data.dtype.itemsize)
        for r0 in chunks:
            block = np.asarray(self.data[r0 : r0 + chunks.step])
            mask[r0 : r0 + block.shape[0]] = valid_pixels(block, self.ignore_value)
        return mask


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

    def __post_init__(self) -> None:
        if getattr(self.data, "ndim", None) != 2:
            raise InputError(
                f"{self.name}: a label map must be 2-D (rows, cols), got shape "
                f"{getattr(self.data, 'shape', None)}"
            )
        if not np.issubdtype(self.data.dtype, np.integer):
            raise InputError(f"{self.name}: a label map must hold integers, got {self.data.dtype}")
        if self.colors is not None:
            self.colors = np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

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
