"""Tiles as dask.distributed tasks: a large scene spread over the cores of a cluster.

``DaskEngine(address)`` connects to a scheduler (``tcp://host:8786``) or starts ``local:N``, a
``LocalCluster`` of N worker processes of one thread each; ``predict``, ``extract`` and
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
import uuid
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ._progress import Progress, run
from .errors import InputError
from .tiled import TileWork, write_maps

INSTALL = "pip install 'napari-mtmsd[distributed]'"


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
            try:
                self.client = distributed.Client(address, timeout="20s")
            except (OSError, TimeoutError, ValueError) as e:
                raise InputError(
                    f"--dask {address}: no dask scheduler answers there ({e}); expected an "
                    "address such as tcp://host:8786, or local:N"
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
        limit = max(2 * self.threads(), reach + 2)  # the lowest pending tile's needs are out
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
                fut = next(queue)
                k = pending.pop(fut.key)[1]
                maps = fut.result()
                finished, written = finished + 1, written + plan.size(k)
                yield write_maps(out, plan, k, maps, written, total)
        finally:
            if pending or parts:
                self.client.cancel([f for f, _ in pending.values()] + list(parts.values()))
        return out

    def _submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Any:
        return self.client.submit(fn, *args, key=key, pure=False)

    def _as_completed(self) -> Any:
        return _distributed().as_completed()


def shippable(work: TileWork) -> TileWork:
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


def _part(work: TileWork, k: int) -> Any:
    return run(work.open().iter_part(k, (0, 1), 1))


def _maps(work: TileWork, k: int, parts: list[Any]) -> Any:
    return work.open().maps(k, dict(zip(work.plan.needs[k], parts, strict=True)))
