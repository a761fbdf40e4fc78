"""The jobs: whole-scene features, a classifier trained from labels, the class map of a scene.

Each job is a progress generator (``iter_*``, see ``_progress``) so the CLI, the Python API and
the napari widgets run the same code. Features go through the on-disk cache (``cache``), so a
second training on new labels, or a prediction after training, costs no extraction. A feature
source is anything with ``shape`` ((..., T, D) features of its pixels), ``chunks(size)`` and
``pixels(coords)``: a whole-scene ``cache.FeatureStore`` or the labelled pixels' ``PixelFeatures``.
Without either, ``iter_predict`` computes features tile by tile (``tiled``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ._console import run_with_bar
from ._progress import Callback, Progress, forward
from ._versioned import versions
from .bundle import ClassifierBundle
from .errors import InputError
from .features import FeatureSpec

if TYPE_CHECKING:
    from .cache import FeatureStore
    from .classifier import MTMSDClassifier
    from .io import Cube
    from .model import DiffusionModel

#: Above this, the few-label head is fitted and predicts tile by tile (``tiled``), in memory
#: bounded by the tiles; below, on the whole scene at once.
WHOLE_SCENE_MB = 512
PREDICT_CHUNK = 2048  # pixels classified at once: a record (and a chance to stop) every ~0.5 s
#: The largest purified scene ``iter_predict`` keeps for ``reuse`` (MB). Indian Pines (21,025
#: pixels, 19 timesteps, k = 192, bf16) takes 307 MB.
REUSE_MAX_MB = 1024


def labels_hash(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int32).tobytes()).hexdigest()[:16]


class FeatureSource(Protocol):
    """Features of some pixels: ``shape`` is (H, W, T, D) for a whole scene or (N, T, D) for N
    pixels; ``chunks`` walks all of them (flat pixel indices or a slice of them, centre,
    global), ``pixels`` reads the given (row, col) ones."""

    shape: Any

    def chunks(self, size: int) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]: ...

    def pixels(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def default_k(n_channels: int) -> int:
    """Channels kept by purification: the paper's share, 768 of 1280 (60 %)."""
    return max(1, round(0.6 * n_channels))


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) label map -> coords (N, 2) of labelled pixels (raster order) and their labels."""
    labels = np.asarray(labels)
    coords = np.argwhere(labels > 0)
    return coords, labels[coords[:, 0], coords[:, 1]].astype(np.int64)


class PixelFeatures:
    """Features of some pixels held in memory, with the same reading API as a whole-scene
    ``cache.FeatureStore``: what patch mode (one window per pixel) produces."""

    def __init__(self, coords: np.ndarray, centre: np.ndarray, glob: np.ndarray, shape: tuple):
        self.coords, self.centre, self.glob, self.width = coords, centre, glob, shape[1]
        self.shape = centre.shape
        self.flat = coords[:, 0] * shape[1] + coords[:, 1]
        self.index = np.full(shape[0] * shape[1], -1, np.int64)
        self.index[self.flat] = np.arange(len(coords))

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for s in range(0, len(self.coords), size):
            yield self.flat[s : s + size], self.centre[s : s + size], self.glob[s : s + size]

    def pixels(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.index[coords[:, 0] * self.width + coords[:, 1]]
        if (rows < 0).any():
            raise InputError("features were computed only for the labelled pixels")
        return self.centre[rows], self.glob[rows]


def iter_features(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    memory_mb: float = 2048,
) -> Generator[Progress, None, FeatureStore]:
    """Whole-scene features, from the cache or computed into it."""
    from .cache import iter_build

    model.check_bands(cube)
    return (
        yield from iter_build(model, cube, spec or FeatureSpec(), cache_dir, device, memory_mb)
    )


def iter_train(
    model: DiffusionModel,
    cube: Cube,
    labels: np.ndarray,
    spec: FeatureSpec | None = None,
    class_names: list[str] | None = None,
    colors: np.ndarray | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    store: FeatureSource | None = None,
    warm_start: ClassifierBundle | None = None,
    method: str = "auto",
    reuse: dict | None = None,
    **classifier_kwargs: Any,
) -> Generator[Progress, None, ClassifierBundle]:
    """Train the MTMSD heads on the labelled pixels of ``labels`` (H, W; 0 = unlabelled).

    ``method`` (``fewlabel.resolve_method``): the paper's heads, or the few-label head on the
    scene embedding (``reuse`` then keeps the embedded scene for the next training and
    prediction on ``store``, when it fits ``WHOLE_SCENE_MB``; a larger scene is worked on tile
    by tile and nothing is kept). With ``warm_start`` (a bundle for which
    :func:`warm_start_mismatch` finds nothing) the paper's heads continue from it instead of
    starting afresh: the interactive "Update".
    """
    from .classifier import MTMSDClassifier
    from .fewlabel import resolve_method
    from .io._types import check_class_ids

    spec = spec or FeatureSpec()
    labels = np.asarray(labels)
    if labels.shape != tuple(cube.data.shape[:2]):
        raise InputError(
            f"training labels are {labels.shape[0]} x {labels.shape[1]} but the cube "
            f"{cube.name!r} is {cube.data.shape[0]} x {cube.data.shape[1]}"
        )
    check_class_ids(labels, "training labels")
    coords, y = labelled_pixels(labels)
    if len(np.unique(y)) < 2:
        raise InputError(
            f"training needs labelled pixels of at least 2 classes; found {len(y)} pixels of "
            f"{len(np.unique(y))} class(es)"
        )
    if method == "auto" and store is not None and len(store.shape) != 4:
        method = "paper"  # features of the labelled pixels only (patch mode): no scene to smooth
    method = resolve_method(method, labels)
    if warm_start is not None and method == "paper":
        reason = warm_start_mismatch(warm_start, model, spec, labels)
        if reason is not None:
            raise InputError(f"cannot continue from the current classifier: {reason}")
        classifier_kwargs.setdefault("n_models", warm_start.classifier.n_models)
    if store is None:
        store = yield from iter_features(model, cube, spec, device, cache_dir)
    if method == "few-label" and _few_label_whole(model, store):
        scene = yield from _few_label_scene(model, cube, store, None, reuse)  # kept in reuse
        clf: Any = scene.fit(labels)
    elif method == "few-label":
        from .tiled import iter_fit_few_label

        if len(store.shape) != 4:
            raise InputError("the few-label method needs features of the whole scene (dense mode)")
        clf = yield from iter_fit_few_label(model, cube, store, spec, labels, device)
    else:
        centre, glob = _labelled_features(store, coords, reuse)
        classifier_kwargs.setdefault("device", "cpu" if device == "auto" else device)
        classifier_kwargs.setdefault("k", default_k(centre.shape[-1]))
        clf = MTMSDClassifier(seed=seed, **classifier_kwargs)
        yield from forward(
            clf.iter_fit(centre, glob, y, None if warm_start is None else warm_start.classifier)
        )
    meta = {
        "method": method,
        "seed": seed,
        "labels_hash": labels_hash(labels),
        "n_train": len(y),
        "cube": {"name": cube.name, "shape": list(cube.data.shape)},
        "model_path": str(model.config.get("path", "")),
        "versions": versions(),
    }
    return ClassifierBundle(model, spec, clf, class_names, colors, meta)


def warm_start_mismatch(
    bundle: ClassifierBundle, model: DiffusionModel, spec: FeatureSpec, labels: np.ndarray
) -> str | None:
    """Why training on ``labels`` cannot continue from ``bundle`` (None when it can): same
    diffusion model, same feature spec and the same set of classes are needed."""
    if bundle.model is not model and bundle.model.fingerprint() != model.fingerprint():
        return "it was trained on another diffusion model"
    if bundle.spec != spec:
        return "it was trained on other features (timesteps, stages or mode)"
    if bundle.method != "paper":
        return "it is the few-label classifier, not the paper's heads"
    labels = np.asarray(labels)
    return bundle.classifier.warm_start_mismatch(labels[labels > 0])


def iter_predict(
    bundle: ClassifierBundle,
    cube: Cube,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    store: FeatureSource | None = None,
    reuse: dict | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    engine: Any = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Class map (H, W) int32 (0 where the cube is invalid or has no features) and confidence
    (H, W) float32 (the ensemble's mean softmax of the predicted class).

    Features come from ``store``, else from the cache in ``cache_dir`` (built when missing,
    except with an ``engine``), else straight from the U-Net tile by tile (``tiled``): memory
    bounded by a tile, nothing kept. ``engine`` (a ``distributed.DaskEngine``) runs the tiles
    as dask tasks. ``out``, two
    C-contiguous (H, W) int32 / float32 arrays of zeros (e.g. memory maps), is filled in place
    and returned; after each finished piece a record carries its ``"region"``
    (``((r0, r1), (c0, c1))``), so a stopped prediction leaves the finished regions filled.

    ``reuse`` is a dict the caller keeps between predictions from one ``store``: the purified
    features of the whole scene are kept in it (up to ``REUSE_MAX_MB``) and predicted from again
    by the next classifier with the same purification, i.e. by each Update that continues a
    training, which then reads and converts nothing; the few-label head keeps its smoothed scene
    when it fits ``WHOLE_SCENE_MB`` (a larger one is predicted tile by tile, nothing kept).
    """
    bundle.model.check_bands(cube)
    H, W = (int(s) for s in cube.data.shape[:2])
    out = out or (np.zeros((H, W), np.int32), np.zeros((H, W), np.float32))
    if store is None and cache_dir is not None and engine is None:
        store = yield from iter_features(bundle.model, cube, bundle.spec, device, cache_dir)
    elif store is None and cache_dir is not None:  # the workers compute what is not cached
        from .cache import lookup

        store = lookup(bundle.model, cube, bundle.spec, cache_dir, device)
    if bundle.method == "few-label" and store is not None and engine is None:
        # whole scene (kept in ``reuse``) when it fits WHOLE_SCENE_MB, else tile by tile
        whole = _few_label_whole(bundle.model, store)
        reuse = ({} if reuse is None else reuse) if whole else None
    if store is None or engine is not None or (bundle.method == "few-label" and reuse is None):
        from .tiled import iter_tiles, plan_work

        if store is not None and len(store.shape) != 4:
            raise InputError("a tiled prediction needs features of the whole scene (dense mode)")
        work = yield from plan_work(bundle, cube, device, store=store)
        if engine is None:
            return (yield from iter_tiles(work, out))
        return (yield from engine.iter_tiles(work, out))
    if bundle.method == "few-label":
        scene = yield from _few_label_scene(
            bundle.model, cube, store, bundle.classifier.embedding, reuse
        )
        return (yield from scene.iter_predict(bundle.classifier, cube.valid_mask(), out))
    return (yield from _iter_store(bundle.classifier, cube, store, reuse, out))


def _few_label_whole(model: DiffusionModel, store: Any) -> bool:
    """Whether the few-label head works on the whole scene at once (fastest: one pass of each
    filter) rather than tile by tile: its vectors and the filters' temporaries, about
    ``40 (C + 32)`` bytes a pixel, fit ``WHOLE_SCENE_MB``."""
    H, W = store.shape[:2]
    return H * W * 40 * (model.n_components + 32) <= WHOLE_SCENE_MB * 2**20


def _iter_store(
    clf: MTMSDClassifier,
    cube: Cube,
    store: FeatureSource,
    reuse: dict | None,
    out: tuple[np.ndarray, np.ndarray],
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """The paper's heads over the store's pixels in runs of whole rows (``reuse``: see
    :func:`iter_predict`)."""
    W = out[0].shape[1]
    class_map, confidence = out[0].reshape(-1), out[1].reshape(-1)  # views of C-order arrays
    valid = np.asarray(cube.valid_mask()).reshape(-1)
    n = int(np.prod(store.shape[:-2]))  # pixels with features: (H, W) or (N,)
    size = max(1, PREDICT_CHUNK // W) * W  # whole rows: each run is a region of the map
    scene, new = None if reuse is None else reuse.get("purified"), None
    if scene is not None and scene.fits(clf, store):
        chunks = ((idx, clf.predict_purified(x, g)) for idx, x, g in scene.chunks(size))
    else:
        if reuse is not None:
            reuse.pop("purified", None)  # its memory is free before new features are made
            if _PurifiedScene.megabytes(clf, n) <= REUSE_MAX_MB:
                new = _PurifiedScene.empty(clf, store, n)
        chunks = _predict_chunks(clf, store, new, size)
    done = 0
    for idx, (labels, conf) in chunks:
        ok = valid[idx]
        class_map[idx], confidence[idx] = np.where(ok, labels, 0), np.where(ok, conf, 0.0)
        flat = np.arange(idx.start, idx.stop) if isinstance(idx, slice) else np.asarray(idx)
        done += len(flat)
        rows = (int(flat.min()) // W, int(flat.max()) // W + 1) if len(flat) else (0, 0)
        yield {"stage": "predict", "step": done, "total": n, "region": (rows, (0, W))}
    if new is not None:
        reuse["purified"] = new  # complete: a stopped prediction leaves nothing half made
    return out


@dataclasses.dataclass
class _PurifiedScene:
    """Purified features of every pixel of ``store`` for classifiers that share ``classifier``'s
    purification (``iter_predict``'s ``reuse``)."""

    store: Any
    classifier: MTMSDClassifier
    flat: np.ndarray
    x: Any  # torch.Tensor (N, T, k)
    g: Any

    @staticmethod
    def megabytes(clf: MTMSDClassifier, n: int) -> float:
        return 2 * n * clf.n_timesteps_ * clf.k_ * clf.purified_dtype().itemsize / 2**20

    @classmethod
    def empty(cls, clf: MTMSDClassifier, store: Any, n: int) -> _PurifiedScene:
        import torch

        shape, dtype = (n, clf.n_timesteps_, clf.k_), clf.purified_dtype()
        flat = np.empty(n, np.int64)
        return cls(
            store, clf, flat, torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
        )

    def fits(self, clf: MTMSDClassifier, store: Any) -> bool:
        return store is self.store and clf.same_purification(self.classifier)

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, Any, Any]]:
        for s in range(0, len(self.flat), size):
            yield self.flat[s : s + size], self.x[s : s + size], self.g[s : s + size]


def _predict_chunks(
    clf: MTMSDClassifier, store: Any, keep: _PurifiedScene | None, size: int
) -> Iterator[tuple[Any, tuple[np.ndarray, np.ndarray]]]:
    """The store's chunks predicted by ``clf``; their purified features copied into ``keep`` on
    the way when given (otherwise purified batch by batch, which stays in the CPU caches)."""
    start = 0
    for idx, c, g in store.chunks(size):
        if keep is None:
            yield idx, clf.predict_with_confidence(c, g)
            continue
        x, gp = clf.purify(c, g)
        rows = slice(start, start + len(x))
        keep.flat[rows] = np.arange(idx.start, idx.stop) if isinstance(idx, slice) else idx
        keep.x[rows], keep.g[rows] = x, gp
        start += len(x)
        yield idx, clf.predict_purified(x, gp)


def _few_label_scene(
    model: DiffusionModel, cube: Cube, store: Any, embedding: Any, reuse: dict | None
) -> Generator[Progress, None, Any]:
    """The embedded, smoothed scene of ``store`` (``fewlabel.FewLabelScene``): the one kept in
    ``reuse`` when it was made from this store (and ``embedding``), else made and kept."""
    from .embedding import FeatureEmbedding
    from .fewlabel import FewLabelScene, SceneVectors

    if len(store.shape) != 4:
        raise InputError("the few-label method needs features of the whole scene (dense mode)")
    kept = None if reuse is None else reuse.get("few-label")
    if kept is not None and kept.fits(store, embedding):
        return kept
    if embedding is None:
        embedding = yield from FeatureEmbedding.iter_fit(store)
    embedded = yield from embedding.iter_transform(store)
    vectors = SceneVectors.of_parts(model.prepare(cube), embedded, cube.valid_mask())
    kept = FewLabelScene.of(store, embedding, vectors, (yield from cube.iter_sha256()))
    if reuse is not None:
        reuse["few-label"] = kept
    return kept


def _labelled_features(
    store: FeatureSource, coords: np.ndarray, reuse: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """The stored features of the pixels ``coords``. With ``reuse``, those read by an earlier
    training on the same store are kept there and not formed again: a scattered pixel's vectors
    are formed from its whole window, ~1 ms each (an Update adds a few labels to many)."""
    if reuse is None:
        return store.pixels(coords)
    kept = reuse.get("pixels")
    if kept is None or kept[0] is not store:
        kept = reuse["pixels"] = (store, {})
    known, keys = kept[1], [tuple(rc) for rc in coords.tolist()]
    new = np.array([k for k in dict.fromkeys(keys) if k not in known], np.int64).reshape(-1, 2)
    if len(new):
        for k, c, g in zip(map(tuple, new.tolist()), *store.pixels(new), strict=True):
            known[k] = (c, g)
    return np.stack([known[k][0] for k in keys]), np.stack([known[k][1] for k in keys])


def train(
    *args: Any, callback: Callback | None = None, progress: bool = True, **kwargs: Any
) -> ClassifierBundle:
    """Plain-function form of :func:`iter_train`: a tqdm bar unless ``progress=False`` or a
    ``callback`` sees the records."""
    return run_with_bar(iter_train(*args, **kwargs), "Train", progress, callback)


def predict(
    *args: Any, callback: Callback | None = None, progress: bool = True, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Plain-function form of :func:`iter_predict` (progress as :func:`train`)."""
    return run_with_bar(iter_predict(*args, **kwargs), "Predict", progress, callback)
