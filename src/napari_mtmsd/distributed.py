"""Tiles as dask.distributed tasks: a large scene spread over the cores of a cluster.

``DaskEngine(address)`` connects to a scheduler (``tcp://host:8786``, or the ``.json`` file of
``dask scheduler --scheduler-file``) or starts ``local:N``, a ``LocalCluster`` of N worker
processes of one thread each; ``predict``, ``extract`` and
``evaluate`` take it as ``--dask ADDRESS`` (docs/scaling.md).

How the work travels: the ``tiled.TileWork`` of a scene (the classifier bundle, the tiles, the
scene's statistics, where the input file is) is scattered to every worker once (``broadcast``).
A task names a tile: the worker opens the cube lazily from the shared file (``io.load_input``,
once per worker), computes the tile and returns its maps (a few hundred kB), which this process
writes into the output. This process is the only writer: workers on several machines writing
disjoint tiles into one shared memory map would share pages of a network file system, where
concurrent writers can lose each other's bytes; a tile's maps are small beside its features.
Few-label tiles need their neighbours' parts (``tiled``): their maps are a second task that
takes the parts' futures, so the parts travel between workers, not through this process.

At most a row of tiles plus two per worker thread are in flight, so parts do not pile up on the
workers; a stop (Ctrl-C, napari's Stop) cancels every pending task.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ._progress import Progress, run
from .errors import InputError
from .tiled import TileWork, write_maps

INSTALL = "pip install 'napari-mtmsd[distributed]'"
HEARTBEAT = 0.25  # seconds between records while every running task is still computing


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            f"--dask needs dask.distributed, which is not installed: {INSTALL}"
        ) from None
    return distributed


class DaskEngine:
    """A dask.distributed client (and the local cluster it started for ``local:N``: worker
    processes, or threads of this process with ``processes=False``)."""

    def __init__(self, address: str, processes: bool = True):
        distributed = _distributed()
        self.cluster = None
        if address.startswith("local:"):
            n = address.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise InputError(f"--dask {address}: expected local:N with N >= 1 workers")
            self.cluster = distributed.LocalCluster(
                n_workers=int(n), threads_per_worker=1, processes=processes, dashboard_address=None
            )
            self.client = distributed.Client(self.cluster)
        else:
            where = (
                {"scheduler_file": address} if address.endswith(".json") else {"address": address}
            )
            try:
                self.client = distributed.Client(**where, timeout="20s")
            except (OSError, TimeoutError, ValueError) as e:
                raise InputError(
                    f"--dask {address}: no dask scheduler answers there ({e}); expected an "
                    "address such as tcp://host:8786, a scheduler file (.json), or local:N"
                ) from e

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def threads(self) -> int:
        return int(sum(self.client.nthreads().values()))

    def iter_tiles(
        self, work: TileWork, out: tuple[np.ndarray, np.ndarray]
    ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        """``tiled.iter_tiles`` with the tiles as tasks: a ``region`` record as each tile's
        maps are written into ``out``, in the order they finish."""
        plan, few = work.plan, work.bundle.method == "few-label"
        total, users = plan.shape[0] * plan.shape[1], plan.users()
        reach = max(max(needs) - k for k, needs in enumerate(plan.needs))
        shipped = self.client.scatter(shippable(work), broadcast=True, hash=False)
        token = uuid.uuid4().hex[:8]
        parts: dict[int, Any] = {}
        pending: dict[str, tuple[Any, int]] = {}
        queue = self._as_completed()
        submitted = finished = written = 0

        def max_need(i: int) -> int:  # the last tile submitted before every user of i is
            return max(max(plan.needs[k]) for k in users[i])

        try:
            while finished < len(plan.tiles):
                # workers may join meanwhile; the lowest pending tile's needs are always out
                limit = max(2 * self.threads(), reach + 2)
                while submitted < len(plan.tiles) and submitted - finished < limit:
                    j, submitted = submitted, submitted + 1
                    parts[j] = self._submit(_part, shipped, j, key=f"part-{token}-{j}")
                    for k in users[j] if few else [j]:
                        if max(plan.needs[k]) != j:
                            continue  # submitted with the last tile it needs
                        fut = parts[j] if not few else self._submit(
                            _maps, shipped, k, [parts[i] for i in plan.needs[k]],
                            key=f"maps-{token}-{k}",
                        )  # fmt: skip
                        pending[fut.key] = (fut, k)
                        queue.add(fut)
                    for i in [i for i in parts if max_need(i) < submitted]:
                        del parts[i]  # the scheduler keeps it while a submitted task needs it
                record = {"stage": "predict", "step": written, "total": total}
                fut = yield from _iter_next(queue, record)
                k = pending.pop(fut.key)[1]
                maps = fut.result()
                finished, written = finished + 1, written + plan.size(k)
                yield write_maps(out, plan, k, maps, written, total)
        finally:
            if pending or parts:
                self.client.cancel([f for f, _ in pending.values()] + list(parts.values()))
        return out

    def iter_scene(
        self,
        model: Any,
        cube: Any,
        spec: Any,
        sink: Callable[[Any, np.ndarray, np.ndarray], None],
        device: str = "auto",
        memory_mb: float = 2048,
    ) -> Generator[Progress, None, None]:
        """``features.iter_scene`` with the tiles as tasks: each tile's features are handed
        to ``sink(tile, centre, glob)`` here as they arrive. A tile's features are large (a
        ``cpu``-preset tile ~1 GB), so at most one per worker thread waits beside the running
        ones."""
        from ._unet_passes import Runner
        from .features import plan_tiles

        if spec.mode != "dense":
            raise InputError(
                "whole-scene features use mode='dense'; 'patch' is for sampled pixels"
            )
        runner = Runner(model, spec, device, memory_mb)
        H, W = (int(s) for s in cube.data.shape[:2])
        tiles = plan_tiles(H, W, runner.window, spec, runner.multiple)
        job = SceneTiles(model, spec, tuple(tiles), device, memory_mb, cube=cube)
        shipped = self.client.scatter(shippable(job), broadcast=True, hash=False)
        token, pending = uuid.uuid4().hex[:8], {}
        queue, submitted, done = self._as_completed(), 0, 0
        try:
            for _ in tiles:
                while submitted < len(tiles) and len(pending) < max(2, 2 * self.threads()):
                    fut = self._submit(_features, shipped, submitted, key=f"f-{token}-{submitted}")
                    pending[fut.key], submitted = (fut, submitted), submitted + 1
                    queue.add(fut)
                record = {"stage": "features", "step": done, "total": H * W}
                fut = yield from _iter_next(queue, record)
                tile = tiles[pending.pop(fut.key)[1]]
                sink(tile, *fut.result())
                done += (tile.rows[1] - tile.rows[0]) * (tile.cols[1] - tile.cols[0])
                yield {"stage": "features", "step": done, "total": H * W}
        finally:
            self.client.cancel([f for f, _ in pending.values()])

    def iter_export(
        self, model: Any, cube: Any, spec: Any, directory: Any, device: str = "auto"
    ) -> Generator[Progress, None, tuple[int, ...]]:
        """Every pixel's features into ``directory``/``centre.npy``, ``global.npy`` ((H, W, T,
        D) float16 memory maps, written here tile by tile) -> their shape."""
        from .features import feature_dim

        H, W = (int(s) for s in cube.data.shape[:2])
        shape = (H, W, len(spec.timesteps), feature_dim(model, spec))
        maps = [
            np.lib.format.open_memmap(directory / name, "w+", np.float16, shape)
            for name in ("centre.npy", "global.npy")
        ]

        def sink(tile: Any, centre: np.ndarray, glob: np.ndarray) -> None:
            at = (slice(*tile.rows), slice(*tile.cols))
            maps[0][at], maps[1][at] = centre, glob

        yield from self.iter_scene(model, cube, spec, sink, device)
        for m in maps:
            m.flush()
        maps.clear()
        return shape

    def _submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Any:
        return self.client.submit(fn, *args, key=key, pure=False)

    def _as_completed(self) -> Any:
        return _distributed().as_completed()


@dataclasses.dataclass
class SceneTiles:
    """The dense feature tiles of a scene, as tasks compute them (``DaskEngine.iter_scene``);
    shipped as ``TileWork`` is."""

    model: Any
    spec: Any
    tiles: tuple[Any, ...]
    device: str = "auto"
    memory_mb: float = 2048
    source: tuple[str, str | None] | None = None
    store_path: str | None = None
    store: Any = None
    cube: Any = dataclasses.field(default=None, repr=False)
    _runner: Any = dataclasses.field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        cube = None if self.source is not None else self.cube
        return {**self.__dict__, "cube": cube, "_runner": None}

    def features(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        from ._unet_passes import Runner
        from .features import iter_tile_features
        from .io import load_input

        if self.cube is None:
            self.cube = load_input(*self.source)[0]
        if self._runner is None:
            self._runner = Runner(self.model, self.spec, self.device, self.memory_mb)
        return run(
            iter_tile_features(self._runner, self.model, self.cube, self.tiles[k], (0, 1), 1)
        )


def _iter_next(queue: Any, record: Progress) -> Generator[Progress, None, Any]:
    """The next finished future of ``queue`` (``as_completed``), with ``record`` repeated every
    ``HEARTBEAT`` seconds until one is: a tile's task runs for seconds on a worker, and the
    caller's Stop and progress display need a record at least once a second."""
    while not queue.has_ready():
        yield record
        time.sleep(HEARTBEAT)
    return next(queue)


def shippable(work: Any) -> Any:
    """``work`` as the workers get it: the cube named by its file (opened there), the store by
    its directory; a cube read from no file (a sample) travels whole."""
    path = work.cube.metadata.get("path") if work.cube is not None else None
    source = (str(path), work.cube.metadata.get("key")) if path else work.source
    store_path = work.store_path
    if work.store is not None:
        store_path = getattr(work.store, "path", None)
        if store_path is None:
            raise InputError("--dask predicts from features of the whole scene (dense mode)")
    store_path = str(store_path) if store_path else None
    return dataclasses.replace(work, source=source, store_path=store_path)


def _features(job: SceneTiles, k: int) -> tuple[np.ndarray, np.ndarray]:
    return job.features(k)


def _part(work: TileWork, k: int) -> Any:
    return run(work.open().iter_part(k, (0, 1), 1))


def _maps(work: TileWork, k: int, parts: list[Any]) -> Any:
    return work.open().maps(k, dict(zip(work.plan.needs[k], parts, strict=True)))
