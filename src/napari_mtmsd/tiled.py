"""Prediction tile by tile: memory bounded by a tile, not by the scene.

The scene is cut into the dense feature tiles of ``features.plan_tiles``; every pixel's features
come from the tile that serves it (the cache instead stitches each stage map across tiles, so a
map predicted from it differs from this one only where a pixel's window crosses a seam:
docs/scaling.md). Predicting a tile is two steps:

1. its *part*: the tile's features (computed by the U-Net, or read from a feature store) turned
   into what the head needs. The paper's heads classify each pixel on its own, so the part is
   already the tile's class map and confidence. The few-label head smooths along the scene's
   edges, so its part is the tile's vectors (the model's input beside the embedded features,
   ``4 (C + n)`` bytes a pixel) and valid mask;
2. its *maps*: from the parts of every tile within ``SpatialSVM.halo`` pixels of it (the
   guided filter's and the random walker's reach), the class map and confidence of the tile.
   The guide's scaling, a statistic of the whole scene, is computed once beforehand
   (``scene_statistics``).

Parts no pending tile needs are dropped, so about one row of tiles is held. ``iter_tiles`` runs
the steps in this process; ``distributed`` runs the same ``TileWork`` as dask tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import Progress
from .errors import InputError
from .features import Tile

if TYPE_CHECKING:
    from .bundle import ClassifierBundle
    from .io import Cube

#: Pixels classified at once by the paper's heads (a record, and a chance to stop, after each).
CLASSIFY_CHUNK = 2048
_ROW_BYTES = 64 << 20  # cube rows read at once by the scene statistics
READ_ROWS = 16  # rows of a tile's stored features formed at once (the store's 16 x 16 blocks)


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """The tiles of a scene, and for each the tiles whose parts its maps need."""

    shape: tuple[int, int]
    tiles: tuple[Tile, ...]
    needs: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shape: tuple[int, int], tiles: list[Tile], halo: int) -> TilePlan:
        H, W = shape
        needs = []
        for t in tiles:
            r0, r1 = max(0, t.rows[0] - halo), min(H, t.rows[1] + halo)
            c0, c1 = max(0, t.cols[0] - halo), min(W, t.cols[1] + halo)
            needs.append(tuple(
                j for j, u in enumerate(tiles)
                if u.rows[0] < r1 and r0 < u.rows[1] and u.cols[0] < c1 and c0 < u.cols[1]
            ))  # fmt: skip
        return cls((H, W), tuple(tiles), tuple(needs))

    def users(self) -> list[list[int]]:
        """For each tile, the tiles whose maps need its part."""
        out: list[list[int]] = [[] for _ in self.tiles]
        for k, needs in enumerate(self.needs):
            for j in needs:
                out[j].append(k)
        return out

    def size(self, k: int) -> int:
        t = self.tiles[k]
        return (t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0])

    def region(self, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.tiles[k].rows, self.tiles[k].cols


@dataclasses.dataclass
class TileWork:
    """What predicting the tiles of one scene needs. Pickled to dask workers without the cube,
    the U-Net runner and the store, which each process opens once from ``source`` (a
    ``io.load_input`` spec) and ``store_path``."""

    bundle: ClassifierBundle
    plan: TilePlan
    good_bands: np.ndarray  # the scene's usable bands: a pixel's validity is judged on them
    bounds: Any  # the scene's guide scaling (few-label), else None
    device: str = "auto"
    memory_mb: float = 2048
    source: tuple[str, str | None] | None = None
    store_path: str | None = None
    scene: str = ""  # the cube's sha256 when the few-label head holds painted pixels of a scene
    cube: Any = dataclasses.field(default=None, repr=False)
    store: Any = dataclasses.field(default=None, repr=False)
    _runner: Any = dataclasses.field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        cube = None if self.source is not None else self.cube  # a cube of no file travels whole
        return {**self.__dict__, "cube": cube, "store": None, "_runner": None}

    def open(self) -> TileWork:
        """The cube, the store and the U-Net runner, opened in this process on first use."""
        if self.cube is None:
            from .io import load_input

            assert self.source is not None, "a TileWork without a cube needs its source"
            self.cube = load_input(*self.source)[0]
        if self.store is None and self.store_path is not None:
            from .cache import FeatureStore

            self.store = FeatureStore(self.store_path)
        if self._runner is None and self.store is None:
            from ._unet_passes import Runner

            self._runner = Runner(self.bundle.model, self.bundle.spec, self.device, self.memory_mb)
        return self

    def iter_part(
        self, k: int, span: tuple[int, int], total: int
    ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        """Step 1 of tile ``k``: its class map and confidence (paper), or its vectors
        ``(h, w, C + n)`` float32 and valid mask (few-label). Records move over ``span``."""
        from .features import iter_tile_features, read_window

        self.open()
        tile, model = self.plan.tiles[k], self.bundle.model
        h, w = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
        if self.store is not None:
            centre, glob = yield from _iter_read(self.store, tile, span, total)
        else:
            work = iter_tile_features(self._runner, model, self.cube, tile, span, total, "predict")
            centre, glob = yield from work
        shape = (h * w, *centre.shape[-2:])
        centre, glob = centre.reshape(shape), glob.reshape(shape)
        valid = self._valid(tile.rows, tile.cols)
        if self.bundle.method != "few-label":
            labels, conf = yield from _iter_classify(
                self.bundle.classifier, centre, glob, span, total
            )
            labels, conf = labels.reshape(h, w), conf.reshape(h, w)
            return np.where(valid, labels, 0).astype(np.int32), np.where(
                valid, conf, np.float32(0)
            )
        embedded = self.bundle.classifier.embedding.transform_rows(centre, glob).reshape(h, w, -1)
        prepared = read_window(model, self.cube, tile.rows[0], tile.cols[0], h, w)
        vectors = np.concatenate([prepared.transpose(1, 2, 0), embedded], axis=-1)
        return vectors.astype(np.float32, copy=False), valid

    def maps(
        self, k: int, parts: dict[int, tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Step 2 of tile ``k`` from the parts of ``plan.needs[k]``: class map (h, w) int32 and
        confidence (h, w) float32."""
        if self.bundle.method != "few-label":
            return parts[k]
        from .fewlabel import maps_of

        head, tile = self.bundle.classifier.head, self.plan.tiles[k]
        vectors, valid, guide, core = self.window(k, parts)
        origin = (tile.rows[0] - core[0].start, tile.cols[0] - core[1].start)
        seeds = head.seed_image(origin, valid.shape, self.scene)
        proba = head.predict_window(vectors, guide, core, seeds, valid)
        return maps_of(self.bundle.classifier.classes_, proba, valid[core])

    def window(
        self, k: int, parts: dict[int, tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, slice]]:
        """Tile ``k`` with its halo in the scene, from the few-label parts of ``plan.needs[k]``:
        vectors (h, w, n), valid mask, guide (scaled as the whole scene's) and where the tile's
        core lies in the window."""
        from .spatial import scale_guide

        (H, W), tile = self.plan.shape, self.plan.tiles[k]
        halo = self.bundle.classifier.head.halo
        r0, r1 = max(0, tile.rows[0] - halo), min(H, tile.rows[1] + halo)
        c0, c1 = max(0, tile.cols[0] - halo), min(W, tile.cols[1] + halo)
        vectors = np.empty((r1 - r0, c1 - c0, parts[k][0].shape[-1]), np.float32)
        valid = np.empty((r1 - r0, c1 - c0), bool)
        for j in self.plan.needs[k]:  # their cores cover the window
            t, (v, ok) = self.plan.tiles[j], parts[j]
            (rs, re), (cs, ce) = (
                (max(t.rows[0], r0), min(t.rows[1], r1)),
                (max(t.cols[0], c0), min(t.cols[1], c1)),
            )
            into = (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))
            at = (slice(rs - t.rows[0], re - t.rows[0]), slice(cs - t.cols[0], ce - t.cols[0]))
            vectors[into], valid[into] = v[at], ok[at]
        guide = scale_guide(vectors[..., 0], valid, self.bounds)
        core = (
            slice(tile.rows[0] - r0, tile.rows[1] - r0),
            slice(tile.cols[0] - c0, tile.cols[1] - c0),
        )
        return vectors, valid, guide, core

    def _valid(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        block = np.asarray(self.cube.data[slice(*rows), slice(*cols)])
        sub = dataclasses.replace(self.cube, data=block, wavelengths=None)
        return np.asarray(sub.valid_mask(self.good_bands), bool)


def _iter_read(
    store: Any, tile: Tile, span: tuple[int, int], total: int
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """A tile's stored features, ``READ_ROWS`` rows at a time with a record after each: forming
    the vectors costs tens of microseconds a pixel, seconds for a whole tile."""
    h, w = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
    centre = glob = None
    for r in range(tile.rows[0], tile.rows[1], READ_ROWS):
        rr, cc = np.mgrid[r : min(r + READ_ROWS, tile.rows[1]), slice(*tile.cols)]
        c, g = store.pixels(np.stack([rr.ravel(), cc.ravel()], 1))
        if centre is None:
            centre = np.empty((h * w, *c.shape[1:]), c.dtype)
            glob = np.empty((h * w, *g.shape[1:]), g.dtype)
        at = slice((r - tile.rows[0]) * w, (r - tile.rows[0]) * w + len(c))
        centre[at], glob[at] = c, g
        yield {"stage": "predict", "step": span[0], "total": total}
    return centre, glob


def _iter_classify(
    clf: Any, centre: np.ndarray, glob: np.ndarray, span: tuple[int, int], total: int
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """The paper's heads over a tile's pixels, a chunk at a time."""
    labels, conf = np.zeros(len(centre), np.int32), np.zeros(len(centre), np.float32)
    for s in range(0, len(centre), CLASSIFY_CHUNK):
        sl = slice(s, s + CLASSIFY_CHUNK)
        labels[sl], conf[sl] = clf.predict_with_confidence(centre[sl], glob[sl])
        yield {"stage": "predict", "step": span[1], "total": total}
    return labels, conf


def plan_work(
    bundle: ClassifierBundle,
    cube: Cube,
    device: str = "auto",
    memory_mb: float = 2048,
    store: Any = None,
) -> Generator[Progress, None, TileWork]:
    """The tiles of ``cube`` and the statistics of the whole scene that every tile needs."""
    from ._unet_passes import Runner
    from .features import plan_tiles

    bundle.model.check_bands(cube)
    if bundle.spec.mode != "dense":
        raise InputError(
            "a whole scene is predicted from dense features; this classifier was trained on "
            "'patch' ones (one window per pixel): train it with mode='dense'"
        )
    runner = Runner(bundle.model, bundle.spec, device, memory_mb)
    H, W = (int(s) for s in cube.data.shape[:2])
    tiles = plan_tiles(H, W, runner.window, bundle.spec, runner.multiple)
    few = bundle.method == "few-label"
    plan = TilePlan.of((H, W), tiles, bundle.classifier.head.halo if few else 0)
    yield {"stage": "predict", "step": 0, "total": H * W}
    good = cube.good_bands()  # one pass over the cube, row chunk by row chunk
    bounds = (yield from scene_statistics(bundle.model, cube, good)) if few else None
    held = few and bundle.classifier.head.seeds is not None
    scene = (yield from cube.iter_sha256()) if held else ""
    return TileWork(bundle, plan, good, bounds, device, memory_mb, scene=scene, cube=cube,
                    store=store, _runner=None if store is not None else runner)  # fmt: skip


def scene_statistics(model: Any, cube: Cube, good: np.ndarray) -> Generator[Progress, None, Any]:
    """The guide's scaling (``spatial.guide_bounds``) from the first component of the model's
    input over the scene's valid pixels, read row chunk by row chunk: 4 bytes a valid pixel."""
    from .spatial import guide_bounds

    H = int(cube.data.shape[0])
    row_bytes = int(np.prod(cube.data.shape[1:])) * np.dtype(cube.data.dtype).itemsize
    step = max(1, _ROW_BYTES // max(row_bytes, 1))
    values = []
    for r0 in range(0, H, step):
        sub = dataclasses.replace(
            cube, data=np.asarray(cube.data[r0 : r0 + step]), wavelengths=None
        )
        first = model.prepare(sub)[..., 0]
        values.append(first[np.asarray(sub.valid_mask(good), bool)])
        yield {"stage": "guide", "step": min(r0 + step, H), "total": H}
    return guide_bounds(np.concatenate(values))


def iter_tiles(
    work: TileWork, out: tuple[np.ndarray, np.ndarray]
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Predict every tile of ``work`` into ``out`` (class map, confidence), in this process: a
    record with ``region`` after each tile's maps are written."""
    plan = work.plan
    total = plan.shape[0] * plan.shape[1]
    users, parts, finished = plan.users(), {}, set()
    left = [set(u) for u in users]  # the users of each part whose maps are not written yet
    started = 0
    for j in range(len(plan.tiles)):
        n = plan.size(j)
        parts[j] = yield from work.iter_part(j, (started, started + n), total)
        started += n
        for k in users[j]:
            if k in finished or any(i not in parts for i in plan.needs[k]):
                continue
            yield write_maps(out, plan, k, work.maps(k, parts), started, total)
            finished.add(k)
            for i in plan.needs[k]:
                left[i].discard(k)
                if not left[i]:
                    del parts[i]  # no pending tile needs it
    return out


def write_maps(
    out: tuple[np.ndarray, np.ndarray],
    plan: TilePlan,
    k: int,
    maps: tuple[np.ndarray, np.ndarray],
    step: int,
    total: int,
) -> Progress:
    """Tile ``k``'s maps into ``out``; the record that says so."""
    (r0, r1), (c0, c1) = plan.region(k)
    out[0][r0:r1, c0:c1], out[1][r0:r1, c0:c1] = maps
    return {"stage": "predict", "step": step, "total": total, "region": ((r0, r1), (c0, c1))}


def iter_training_rows(
    bundle: ClassifierBundle, cube: Cube, store: Any, labels: np.ndarray, device: str = "auto"
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """The few-label head's smoothed vectors at the labelled pixels of ``labels (H, W)`` and
    their labels, in raster order (what ``SpatialSVM.fit`` takes from a whole smoothed scene),
    from the tiles that hold labels and their neighbours only: memory bounded by the tiles, as
    in prediction. ``bundle`` holds the fitted embedding and the unfitted head."""
    work = yield from plan_work(bundle, cube, device, store=store)
    plan, head = work.plan, bundle.classifier.head
    wanted = [
        k for k, t in enumerate(plan.tiles) if (labels[slice(*t.rows), slice(*t.cols)] > 0).any()
    ]
    last_use = {j: i for i, k in enumerate(wanted) for j in plan.needs[k]}
    total = sum(plan.size(j) for j in last_use)
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows, ys, flats, done = [], [], [], 0
    for i, k in enumerate(wanted):
        for j in plan.needs[k]:
            if j not in parts:
                parts[j] = yield from work.iter_part(j, (done, done + plan.size(j)), total)
                done += plan.size(j)
        vectors, _, guide, core = work.window(k, parts)
        tile = plan.tiles[k]
        painted = labels[slice(*tile.rows), slice(*tile.cols)]
        r, c = np.nonzero(painted > 0)
        rows.append(head.smooth(vectors, guide)[core][r, c])
        ys.append(painted[r, c])
        flats.append((r + tile.rows[0]) * plan.shape[1] + c + tile.cols[0])
        for j in [j for j in parts if last_use[j] == i]:
            del parts[j]  # no later tile needs it
    order = np.argsort(np.concatenate(flats), kind="stable")
    return np.concatenate(rows)[order], np.concatenate(ys)[order]


def iter_fit_few_label(
    model: Any, cube: Cube, store: Any, spec: Any, labels: np.ndarray, device: str = "auto"
) -> Generator[Progress, None, Any]:
    """The few-label classifier of ``labels`` from the tiles holding them
    (:func:`iter_training_rows`): the classifier the whole smoothed scene gives, in memory
    bounded by the tiles."""
    from .bundle import ClassifierBundle
    from .embedding import FeatureEmbedding
    from .fewlabel import FewLabelClassifier, SpatialSVM

    embedding = yield from FeatureEmbedding.iter_fit(store)
    clf = FewLabelClassifier(embedding, SpatialSVM(n_spectral=model.n_components))
    bundle = ClassifierBundle(model, spec, clf, meta={"method": "few-label"})
    x, y = yield from iter_training_rows(bundle, cube, store, labels, device)
    clf.head.fit_rows(x, y, np.argwhere(labels > 0), (yield from cube.iter_sha256()))
    return clf
