"""On-disk cache of whole-scene features, so retraining after new labels costs no extraction.

An entry is a directory ``<root>/<key>/`` holding ``centre.npy`` and ``global.npy``, each an
(H, W, T, D) float16 array, and ``meta.json``. The key hashes everything the features depend on:
the model's fingerprint, the cube's bytes, the feature spec and this format's version.

Why ``.npy`` memory maps rather than zarr: readers need random access to a few thousand pixels
(training labels) and a sequential pass (prediction); a memory-mapped ``.npy`` gives both at disk
speed with numpy alone, and float16 features barely compress. An entry is written into a hidden
temp directory and renamed into place only when complete, so a process killed mid-write never
leaves anything that looks like a valid entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._atomic import atomic_dir, remove_ours, sweep, verify
from ._progress import Progress
from .features import FeatureSpec, Tile, effective_bf16, feature_dim, iter_scene

if TYPE_CHECKING:
    import torch

    from .io import Cube
    from .model import DiffusionModel

FORMAT_VERSION = 1


def default_root() -> Path:
    """``$NAPARI_MTMSD_CACHE`` or ``~/.cache/napari-mtmsd/features``."""
    env = os.environ.get("NAPARI_MTMSD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-mtmsd" / "features"


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
    """A complete cache entry: memory-mapped (H, W, T, D) float16 ``centre`` and ``glob``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        verify(self.path)  # altered or NaN-filled values are caught here, not classified
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.centre = np.load(self.path / "centre.npy", mmap_mode="r")
        self.glob = np.load(self.path / "global.npy", mmap_mode="r")
        expected = tuple(self.meta["shape"])
        if self.centre.shape != expected or self.glob.shape != expected:
            raise ValueError(f"cache entry {self.path} does not match its meta.json")

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.meta["spec"])

    @property
    def nbytes(self) -> int:
        return int(self.centre.nbytes + self.glob.nbytes)

    def chunks(self, size: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Raster-order runs of pixels: (flat index range, centre, glob), read sequentially."""
        H, W = self.centre.shape[:2]
        centre = self.centre.reshape(H * W, *self.centre.shape[2:])
        glob = self.glob.reshape(H * W, *self.glob.shape[2:])
        for s in range(0, H * W, size):
            sl = slice(s, min(s + size, H * W))
            yield sl, np.asarray(centre[sl]), np.asarray(glob[sl])

    def pixels(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features of pixels (N, 2) -> centre, glob (N, T, D) float16, read from disk."""
        coords = np.asarray(coords)
        order = np.lexsort((coords[:, 1], coords[:, 0]))  # raster order reads the file forwards
        r, c = coords[order, 0], coords[order, 1]
        centre = np.empty((len(coords), *self.centre.shape[2:]), np.float16)
        glob = np.empty_like(centre)
        centre[order] = self.centre[r, c]
        glob[order] = self.glob[r, c]
        return centre, glob


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
    """Whole-scene dense features into the cache (a hit returns at once) -> the entry."""
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
    shape = (H, W, len(spec.timesteps), feature_dim(model, spec))
    with atomic_dir(root / key, kind="feature cache entry") as tmp:
        out = {
            name: np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.float16, shape)
            for name in ("centre", "global")
        }

        def sink(tile: Tile, c: np.ndarray, g: np.ndarray) -> None:
            rs, cs = slice(*tile.rows), slice(*tile.cols)
            out["centre"][rs, cs], out["global"][rs, cs] = c, g

        yield from iter_scene(model, cube, spec, sink, device, memory_mb)
        yield from _iter_flush(list(out.values()))
        out.clear()  # close the maps before the directory is renamed
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "shape": list(shape),
            "spec": spec.to_dict(),
            "model": model.fingerprint(),
            "cube": {"name": cube.name, "shape": list(cube.data.shape)},
            "stage_channels": list(model.unet.stage_channels(spec.stages)),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return FeatureStore(root / key)


def entries(root: str | os.PathLike | None = None) -> list[dict]:
    """The complete entries: path, cube name and shape, feature shape, size in MB."""
    root = Path(root or default_root())
    out = []
    for meta_file in sorted(root.glob("*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        size = sum(f.stat().st_size for f in meta_file.parent.iterdir() if f.is_file())
        out.append(
            {
                "path": str(meta_file.parent),
                "cube": meta["cube"]["name"],
                "shape": tuple(meta["shape"]),
                "size_mb": size / 2**20,
            }
        )
    return out


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
