"""On-disk cache of whole-scene features, so retraining after new labels costs no extraction.

An entry is a directory ``<root>/<key>/`` holding one ``stage<N>.npy`` per decoder stage, the
stage's map at its own resolution over the scene, ``(Hs, Ws, T, Cs)`` float16, and
``meta.json`` (where each map lies, ``_stage_maps.StageGrid``). ``FeatureStore`` forms the centre
and global vectors from those maps when they are read (``_stage_maps``): about a sixth of the
bytes of storing the vectors (docs/features.md, "Storage"). The key hashes everything the
features depend on: the model's fingerprint, the cube's bytes, the feature spec and this
format's version.

Why ``.npy`` memory maps rather than zarr: readers need random access to a few thousand pixels
(training labels) and a sequential pass (prediction); a memory-mapped ``.npy`` gives both at disk
speed with numpy alone, and float16 features barely compress. An entry is written into a hidden
temp directory and renamed into place only when complete, so a process killed mid-write never
leaves anything that looks like a valid entry. Disk use is capped (``max_bytes``): before an
entry is written, the least recently used complete entries are removed until it fits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import _stage_maps
from ._atomic import atomic_dir, remove_ours, sweep, verify
from ._progress import Progress
from .errors import OutputError
from .features import FeatureSpec, effective_bf16

if TYPE_CHECKING:
    import torch

    from .io import Cube
    from .model import DiffusionModel

FORMAT_VERSION = 2  # 1: centre and global vectors, (H, W, T, D) each
MAX_GB_ENV = "NAPARI_MTMSD_CACHE_MAX_GB"
DEFAULT_MAX_GB = 50.0
#: Bytes of features formed at once when reading (a band of rows, or fewer for wide scenes).
BAND_BYTES = 64 << 20
_BLOCK = 32  # output columns formed together (the operators are dense over their cells)

_open_stores: weakref.WeakSet[FeatureStore] = weakref.WeakSet()  # in use: never evicted


def default_root() -> Path:
    """``$NAPARI_MTMSD_CACHE`` or ``~/.cache/napari-mtmsd/features``."""
    env = os.environ.get("NAPARI_MTMSD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-mtmsd" / "features"


def max_bytes() -> int:
    """The cap on the cache's disk use: ``$NAPARI_MTMSD_CACHE_MAX_GB`` (the CLI's
    ``--cache-max-gb`` sets it) or ``DEFAULT_MAX_GB``; GB are 10^9 bytes."""
    text = os.environ.get(MAX_GB_ENV, "")
    try:
        gb = float(text) if text else DEFAULT_MAX_GB
    except ValueError:
        raise OutputError(f"{MAX_GB_ENV}={text!r}: expected a number of GB") from None
    if gb <= 0:
        raise OutputError(f"{MAX_GB_ENV}={text!r}: expected a positive number of GB")
    return int(gb * 1e9)


def cache_key(
    model: DiffusionModel, cube: Cube, spec: FeatureSpec, device: str | torch.device = "auto"
) -> str:
    payload = json.dumps(
        {
            "format": FORMAT_VERSION,
            "model": model.fingerprint(),
            "cube": cube.sha256(),
            "ignore_value": cube.ignore_value,
            "spec": spec.to_dict(),
            "bf16": effective_bf16(model, spec, device),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class FeatureStore:
    """A complete cache entry: the features of every pixel, ``shape`` (H, W, T, D), read as
    float16 centre and global vectors by ``chunks`` (raster order) and ``pixels`` (any)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        verify(self.path)  # altered or NaN-filled values are caught here, not classified
        self.meta = json.loads((self.path / "meta.json").read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"cache entry {self.path} has format {self.meta.get('format')}")
        self.grids = [_stage_maps.StageGrid.from_dict(g) for g in self.meta["grids"]]
        self.window = int(self.meta["window"])
        self._shape = tuple(int(n) for n in self.meta["shape"])
        # copy-on-write maps: writable for torch to read without a copy; nothing writes them
        self.maps = [np.load(self.path / f"stage{g.stage}.npy", mmap_mode="c") for g in self.grids]
        T, D = self.shape[2:]
        shapes = [(*g.shape, T, g.channels) for g in self.grids]
        if [m.shape for m in self.maps] != shapes or sum(s[-1] for s in shapes) != D:
            raise ValueError(f"cache entry {self.path} does not match its meta.json")
        self._offsets = np.cumsum([0, *(g.channels for g in self.grids)])
        _open_stores.add(self)
        with contextlib.suppress(OSError):  # a read-only cache is still read
            os.utime(self.path)  # when it was last used: the least recently used goes first

    @property
    def shape(self) -> tuple[int, ...]:
        """(H, W, T, D): the scene's pixels, timesteps and feature channels."""
        return self._shape

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.meta["spec"])

    @property
    def nbytes(self) -> int:
        return int(sum(m.nbytes for m in self.maps))

    def block(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        timesteps: np.ndarray | slice = slice(None),
        channels: np.ndarray | None = None,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of the pixels ``rows x cols`` -> centre, glob (n_rows, n_cols, T, D)
        float16 (written into ``out`` when given); of the given ``timesteps`` and (sorted)
        ``channels`` only when given."""
        import torch

        if out is None:
            n_t = len(np.arange(self.shape[2])[timesteps])
            n_d = self.shape[3] if channels is None else len(channels)
            out = tuple(np.empty((len(rows), len(cols), n_t, n_d), np.float16) for _ in "cg")
        centre, glob = out
        chosen = np.arange(self.shape[3]) if channels is None else np.asarray(channels)
        out = torch.from_numpy(centre), torch.from_numpy(glob)
        for k, (stored, grid) in enumerate(zip(self.maps, self.grids, strict=True)):
            lo, hi = np.searchsorted(chosen, self._offsets[k : k + 2])
            if lo == hi:
                continue
            select = (
                timesteps,
                slice(None) if channels is None else chosen[lo:hi] - self._offsets[k],
            )
            dest = out[0][..., lo:hi], out[1][..., lo:hi]
            _stage_maps.form(stored, grid, rows, cols, self.window, dest, select)
        return centre, glob

    def view(self, kind: str = "centre") -> FeatureView:
        """The centre (or ``"global"``) features as a lazily formed (H, W, T, D) array."""
        return FeatureView(self, kind)

    def band(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Features of rows ``r0:r1`` -> centre, glob (r1 - r0, W, T, D) float16."""
        W = self.shape[1]
        centre = np.empty((r1 - r0, W, *self.shape[2:]), np.float16)
        glob = np.empty_like(centre)
        rows = np.arange(r0, r1)
        step = max(
            _BLOCK, BAND_BYTES // (4 * (r1 - r0 + self.window) * int(np.prod(self.shape[2:])))
        )
        for c0 in range(0, W, step):  # the stored cells read at once stay near BAND_BYTES
            c1 = min(c0 + step, W)
            self.block(rows, np.arange(c0, c1), out=(centre[:, c0:c1], glob[:, c0:c1]))
        return centre, glob

    def chunks(self, size: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Raster-order runs of ``size`` pixels: (flat index range, centre, glob), formed a band
        of rows at a time (memory bounded by ``BAND_BYTES``)."""
        H, W, T, D = self.shape
        rows = int(np.clip(BAND_BYTES // (W * T * D * 4), 1, _BLOCK))
        left = (np.empty((0, T, D), np.float16),) * 2  # the last band's pixels not yet yielded
        for r0 in range(0, H, rows):
            c, g = (a.reshape(-1, T, D) for a in self.band(r0, min(r0 + rows, H)))
            start, n = r0 * W - len(left[0]), len(left[0]) + len(c)
            if left[0].size:  # a run across two bands: the only pixels copied
                k = min(size - len(left[0]), len(c))
                c0, g0 = np.concatenate([left[0], c[:k]]), np.concatenate([left[1], g[:k]])
                if len(c0) < size and r0 + rows < H:
                    left = c0, g0
                    continue
                yield slice(start, start + len(c0)), c0, g0
                c, g, start, n = c[k:], g[k:], start + len(c0), n - len(c0)
            full = n if r0 + rows >= H else n // size * size
            for s in range(0, full, size):
                e = min(s + size, full)
                yield slice(start + s, start + e), c[s:e], g[s:e]
            left = c[full:], g[full:]

    def pixels(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features of pixels (N, 2) -> centre, glob (N, T, D) float16, formed a block of
        ``16 x 16`` pixels at a time from the rows and columns wanted in it."""
        coords = np.asarray(coords, np.int64).reshape(-1, 2)
        centre = np.empty((len(coords), *self.shape[2:]), np.float16)
        glob = np.empty_like(centre)
        blocks = (coords[:, 0] // 16) * (self.shape[1] // 16 + 1) + coords[:, 1] // 16
        order = np.argsort(blocks, kind="stable")
        bounds = np.flatnonzero(np.diff(blocks[order])) + 1
        for idx in np.split(order, bounds) if len(order) else []:
            r, c = coords[idx, 0], coords[idx, 1]
            rows, ri = np.unique(r, return_inverse=True)
            cols, ci = np.unique(c, return_inverse=True)
            bc, bg = self.block(rows, cols)
            centre[idx], glob[idx] = bc[ri, ci], bg[ri, ci]
        return centre, glob


class FeatureView:
    """A store's centre or global features as a read-only (H, W, T, D) float16 array formed for
    what is indexed (ints and slices): a napari layer shows one timestep and channel of them,
    the inspector's PCA reads a timestep at a time. ``transpose`` reorders the axes lazily."""

    dtype = np.dtype(np.float16)
    ndim = 4

    def __init__(self, store: FeatureStore, kind: str = "centre", axes: tuple = (0, 1, 2, 3)):
        self.store, self.kind, self.axes = store, kind, tuple(axes)
        self.shape = tuple(store.shape[a] for a in self.axes)

    def transpose(self, *axes: int) -> FeatureView:
        axes = tuple(axes[0]) if len(axes) == 1 and not isinstance(axes[0], int) else axes
        return FeatureView(self.store, self.kind, tuple(self.axes[a] for a in axes))

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __getitem__(self, key: object) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (5 - len(key)) + key[i + 1 :]
        key = key + (slice(None),) * (4 - len(key))
        index = [np.arange(self.shape[v])[k] for v, k in enumerate(key)]
        drop = tuple(0 if np.ndim(i) == 0 else slice(None) for i in index)
        nat = [None] * 4
        for v, i in enumerate(index):
            nat[self.axes[v]] = np.atleast_1d(i)
        rows, cols, ts, ds = nat
        out = np.empty((len(rows), len(cols), len(ts), len(ds)), np.float16)
        ro, co, do = (np.argsort(a, kind="stable") for a in (rows, cols, ds))
        for rs in _spans(rows[ro]):  # blocks of nearby pixels: the cells read stay few
            for cs in _spans(cols[co]):
                c, g = self.store.block(rows[ro[rs]], cols[co[cs]], ts, ds[do])
                out[np.ix_(ro[rs], co[cs], np.arange(len(ts)), do)] = (
                    c if self.kind == "centre" else g
                )
        return out.transpose(self.axes)[drop]


def _spans(positions: np.ndarray, span: int = 64) -> list[slice]:
    """Runs of sorted ``positions``, each within ``span`` of its first."""
    runs, s = [], 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] - positions[s] >= span:
            runs.append(slice(s, i))
            s = i
    return runs


def lookup(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
) -> FeatureStore | None:
    """The complete entry for these inputs, or None. A damaged entry is removed and missed."""
    return _open(Path(root or default_root()) / cache_key(model, cube, spec, device))


def _open(path: Path) -> FeatureStore | None:
    if not (path / "meta.json").is_file():
        return None
    try:
        return FeatureStore(path)
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(path, ignore_errors=True)
        return None


def _iter_flush(arrays: list[np.memmap], chunk: int = 64 << 20) -> Generator[Progress, None, None]:
    """Write memory-mapped arrays to disk a chunk at a time (``msync`` of a range), with a
    record after each: a whole-scene ``paper`` entry is gigabytes, seconds of disk writes."""
    ranges = [(arr.base, off) for arr in arrays for off in range(0, len(arr.base), chunk)]
    for i, (mm, off) in enumerate(ranges):
        mm.flush(off, min(chunk, len(mm) - off))
        yield {"stage": "saving features", "step": i + 1, "total": len(ranges)}


def iter_build(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec | None = None,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    memory_mb: float = 2048,
) -> Generator[Progress, None, FeatureStore]:
    """Whole-scene dense features into the cache (a hit returns at once) -> the entry. Room is
    made first (``evict``): the new entry's size is known once its stage maps are planned."""
    spec = spec or FeatureSpec()
    root = Path(root or default_root())
    H, W = cube.data.shape[:2]
    yield {"stage": "features", "step": 0, "total": H * W}  # hashing the inputs takes a moment
    sweep(root)  # what killed builds left behind
    yield from cube.iter_sha256()  # in chunks, with records; cache_key reuses the digest
    key = cache_key(model, cube, spec, device)
    hit = _open(root / key)
    if hit is not None:
        yield {"stage": "features", "step": 1, "total": 1, "cached": True}
        return hit
    nT = len(spec.timesteps)
    with atomic_dir(root / key, kind="feature cache entry") as tmp:
        maps: list[np.memmap] = []

        def open_maps(grids: list[_stage_maps.StageGrid]) -> list[np.memmap]:
            shapes = [(*g.shape, nT, g.channels) for g in grids]
            evict(root, sum(2 * int(np.prod(s)) + 128 for s in shapes), keep=root / key)
            maps.extend(
                np.lib.format.open_memmap(tmp / f"stage{g.stage}.npy", "w+", np.float16, s)
                for g, s in zip(grids, shapes, strict=True)
            )
            return maps

        grids = yield from _stage_maps.iter_build(model, cube, spec, open_maps, device, memory_mb)
        yield from _iter_flush(maps)
        maps.clear()  # close the maps before the directory is renamed
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "shape": [H, W, nT, sum(g.channels for g in grids)],
            "window": int(model.patch_size),
            "grids": [g.to_dict() for g in grids],
            "spec": spec.to_dict(),
            "model": model.fingerprint(),
            "cube": {"name": cube.name, "shape": list(cube.data.shape)},
            "stage_channels": [g.channels for g in grids],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return FeatureStore(root / key)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def entries(root: str | os.PathLike | None = None) -> list[dict]:
    """The complete entries, least recently used first: path, cube name and shape, feature
    shape, size in MB, bytes per pixel, format version and when last used (seconds since the
    epoch)."""
    root = Path(root or default_root())
    out = []
    for meta_file in root.glob("*/meta.json"):
        try:
            meta = json.loads(meta_file.read_text())
            size, used = _size(meta_file.parent), meta_file.parent.stat().st_mtime
        except (OSError, json.JSONDecodeError):
            continue
        shape = tuple(meta.get("shape", ()))
        pixels = int(np.prod(shape[:2])) if len(shape) >= 2 else 0
        out.append(
            {
                "path": str(meta_file.parent),
                "cube": meta.get("cube", {}).get("name"),
                "shape": shape,
                "size_mb": size / 2**20,
                "bytes_per_pixel": size / pixels if pixels else None,
                "format": meta.get("format", 1),
                "last_used": used,
            }
        )
    return sorted(out, key=lambda e: e["last_used"])


def evict(root: str | os.PathLike | None, need: int, keep: Path | None = None) -> list[Path]:
    """Make room for ``need`` more bytes under ``max_bytes()``: entries of older formats go
    first, then complete entries, least recently used first; never ``keep`` (being written) or
    an entry this process has open. -> the entries removed. ``OutputError`` if it cannot fit."""
    root = Path(root or default_root())
    cap, used = max_bytes(), disk_usage(root)
    in_use = {Path(s.path).resolve() for s in list(_open_stores)}
    if keep is not None:
        in_use.add(Path(keep).resolve())
    candidates = [e for e in entries(root) if Path(e["path"]).resolve() not in in_use]
    candidates.sort(key=lambda e: (e["format"] == FORMAT_VERSION, e["last_used"]))
    chosen = []
    for e in candidates:
        if used + need <= cap and e["format"] == FORMAT_VERSION:
            break
        chosen.append(Path(e["path"]))
        used -= _size(chosen[-1])
    if used + need > cap:  # decided before anything is removed
        raise OutputError(
            f"the features of this scene need {need / 1e9:.2f} GB; the feature cache {root} "
            f"can free no more than leaves {used / 1e9:.2f} GB in use of its "
            f"{cap / 1e9:.2f} GB cap: raise the cap (--cache-max-gb, or ${MAX_GB_ENV})"
        )
    for path in chosen:
        shutil.rmtree(path, ignore_errors=True)
    removed = chosen
    return removed


def disk_usage(root: str | os.PathLike | None = None) -> int:
    """Bytes used by the cache, incomplete temp directories included."""
    root = Path(root or default_root())
    if not root.exists():
        return 0
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def clear(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove every entry and leftover of an interrupted write; nothing else -> what remains."""
    return remove_ours(Path(root or default_root()), legacy=_is_entry)


def _is_entry(path: Path) -> bool:
    """An entry written before entries carried a marker: its meta.json names its own key."""
    try:
        return json.loads((path / "meta.json").read_text()).get("key") == path.name
    except (OSError, ValueError, AttributeError):
        return False
