"""The end-to-end jobs: train a classifier from labels, predict a scene, evaluate on ground truth.

Each job is a progress generator (``iter_*``, see ``_progress``) so the CLI, the Python API and
the napari widgets run the same code. Features go through the on-disk cache (``cache``), so a
second training on new labels, or a prediction after training, costs no extraction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import resource
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from ._atomic import atomic_dir
from ._progress import Progress, forward, run
from .errors import InputError, ModelFileError
from .features import FeatureSpec

if TYPE_CHECKING:
    from .cache import FeatureStore
    from .classifier import MTMSDClassifier
    from .io import Cube
    from .model import DiffusionModel

BUNDLE_FORMAT = 1
PREDICT_CHUNK = 8192  # pixels classified at once when reading cached features
#: The largest purified scene ``iter_predict`` keeps for ``reuse`` (MB). Indian Pines (21,025
#: pixels, 19 timesteps, k = 192, bf16) takes 307 MB.
REUSE_MAX_MB = 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def labels_hash(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int32).tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class ClassifierBundle:
    """Everything needed to classify a new cube: the diffusion model, the feature spec, the
    trained heads and the classes. Saved as one directory (the model is copied in, so a bundle
    moves between machines as a whole)."""

    model: DiffusionModel
    spec: FeatureSpec
    classifier: MTMSDClassifier
    class_names: list[str] | None = None
    colors: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.model.save(tmp / "model")
            self.classifier.save(tmp / "classifier")
            info = {
                "format_version": BUNDLE_FORMAT,
                "kind": "napari-mtmsd classifier",
                "spec": self.spec.to_dict(),
                "class_names": self.class_names,
                "colors": None if self.colors is None else np.asarray(self.colors).tolist(),
                "model_fingerprint": self.model.fingerprint(),
                **self.meta,
            }
            (tmp / "bundle.json").write_text(json.dumps(info, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ClassifierBundle:
        from .classifier import MTMSDClassifier
        from .model import DiffusionModel

        path = Path(path)
        info_file = path / "bundle.json"
        if not info_file.is_file():
            raise ModelFileError(f"{path} is not a classifier directory: no bundle.json in it")
        try:
            info = json.loads(info_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{info_file} is unreadable or corrupt: {e}") from e
        if info.get("format_version") != BUNDLE_FORMAT:
            raise ModelFileError(
                f"{path} has classifier format {info.get('format_version')!r}; this version of "
                f"napari-mtmsd reads format {BUNDLE_FORMAT}"
            )
        model = DiffusionModel.load(path / "model", device=device)
        if model.fingerprint() != info["model_fingerprint"]:
            raise ModelFileError(
                f"the diffusion model in {path / 'model'} is not the one this classifier was "
                "trained on (fingerprint mismatch)"
            )
        classifier = MTMSDClassifier.load(path / "classifier")
        meta = {
            k: v
            for k, v in info.items()
            if k not in ("spec", "class_names", "colors", "model_fingerprint")
        }
        colors = None if info.get("colors") is None else np.asarray(info["colors"], np.uint8)
        return cls(
            model,
            FeatureSpec.from_dict(info["spec"]),
            classifier,
            info.get("class_names"),
            colors,
            meta,
        )


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


@contextlib.contextmanager
def _cache_root(cache_dir: str | Path | bool | None) -> Iterator[Path | None]:
    """``None``: the user cache; ``False``: a temp directory removed afterwards; else that path."""
    if cache_dir is False:
        with tempfile.TemporaryDirectory(prefix="napari-mtmsd-") as d:
            yield Path(d)
    else:
        yield None if cache_dir in (None, True) else Path(cache_dir)


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
    store: FeatureStore | PixelFeatures | None = None,
    warm_start: ClassifierBundle | None = None,
    **classifier_kwargs: Any,
) -> Generator[Progress, None, ClassifierBundle]:
    """Train the MTMSD heads on the labelled pixels of ``labels`` (H, W; 0 = unlabelled).

    With ``warm_start`` (a bundle for which :func:`warm_start_mismatch` finds nothing) training
    continues from its heads instead of starting afresh: the interactive "Update".
    """
    from .classifier import MTMSDClassifier

    spec = spec or FeatureSpec()
    labels = np.asarray(labels)
    if labels.shape != tuple(cube.data.shape[:2]):
        raise InputError(
            f"training labels are {labels.shape[0]} x {labels.shape[1]} but the cube "
            f"{cube.name!r} is {cube.data.shape[0]} x {cube.data.shape[1]}"
        )
    coords, y = labelled_pixels(labels)
    if len(np.unique(y)) < 2:
        raise InputError(
            f"training needs labelled pixels of at least 2 classes; found {len(y)} pixels of "
            f"{len(np.unique(y))} class(es)"
        )
    if warm_start is not None:
        reason = warm_start_mismatch(warm_start, model, spec, labels)
        if reason is not None:
            raise InputError(f"cannot continue from the current classifier: {reason}")
        classifier_kwargs.setdefault("n_models", warm_start.classifier.n_models)
    if store is None:
        store = yield from iter_features(model, cube, spec, device, cache_dir)
    centre, glob = store.pixels(coords)
    classifier_kwargs.setdefault("device", "cpu" if device == "auto" else device)
    classifier_kwargs.setdefault("k", default_k(centre.shape[-1]))
    clf = MTMSDClassifier(seed=seed, **classifier_kwargs)
    yield from forward(
        clf.iter_fit(centre, glob, y, None if warm_start is None else warm_start.classifier)
    )
    meta = {
        "seed": seed,
        "labels_hash": labels_hash(labels),
        "n_train": len(y),
        "cube": {"name": cube.name, "shape": list(cube.data.shape)},
        "model_path": str(model.config.get("path", "")),
        "versions": _versions(),
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
    labels = np.asarray(labels)
    return bundle.classifier.warm_start_mismatch(labels[labels > 0])


def iter_predict(
    bundle: ClassifierBundle,
    cube: Cube,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    store: FeatureStore | PixelFeatures | None = None,
    reuse: dict | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Class map (H, W) int32 (0 where the cube is invalid or has no features) and confidence
    (H, W) float32 (the ensemble's mean softmax of the predicted class).

    ``reuse`` is a dict the caller keeps between predictions from one ``store``: the purified
    features of the whole scene are kept in it (up to ``REUSE_MAX_MB``) and predicted from again
    by the next classifier with the same purification, i.e. by each Update that continues a
    training, which then reads and converts nothing.
    """
    if store is None:
        store = yield from iter_features(bundle.model, cube, bundle.spec, device, cache_dir)
    H, W = cube.data.shape[:2]
    class_map = np.zeros(H * W, np.int32)
    confidence = np.zeros(H * W, np.float32)
    clf = bundle.classifier
    n = len(store.coords) if isinstance(store, PixelFeatures) else H * W
    total = -(-n // PREDICT_CHUNK)
    scene, new = None if reuse is None else reuse.get("purified"), None
    if scene is not None and scene.fits(clf, store):
        chunks = ((idx, clf.predict_purified(x, g)) for idx, x, g in scene.chunks(PREDICT_CHUNK))
    else:
        if reuse is not None:
            reuse.pop("purified", None)  # its memory is free before new features are made
            if _PurifiedScene.megabytes(clf, n) <= REUSE_MAX_MB:
                new = _PurifiedScene.empty(clf, store, n)
        chunks = _predict_chunks(clf, store, new)
    for i, (idx, (labels, conf)) in enumerate(chunks):
        class_map[idx], confidence[idx] = labels, conf
        yield {"stage": "predict", "step": i + 1, "total": total}
    if new is not None:
        reuse["purified"] = new  # complete: a stopped prediction leaves nothing half made
    valid = np.asarray(cube.valid_mask()).reshape(-1)
    class_map[~valid], confidence[~valid] = 0, 0.0
    return class_map.reshape(H, W), confidence.reshape(H, W)


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
    clf: MTMSDClassifier, store: Any, keep: _PurifiedScene | None
) -> Iterator[tuple[Any, tuple[np.ndarray, np.ndarray]]]:
    """The store's chunks predicted by ``clf``; their purified features copied into ``keep`` on
    the way when given (otherwise purified batch by batch, which stays in the CPU caches)."""
    start = 0
    for idx, c, g in store.chunks(PREDICT_CHUNK):
        if keep is None:
            yield idx, clf.predict_with_confidence(c, g)
            continue
        x, gp = clf.purify(c, g)
        rows = slice(start, start + len(x))
        keep.flat[rows] = np.arange(idx.start, idx.stop) if isinstance(idx, slice) else idx
        keep.x[rows], keep.g[rows] = x, gp
        start += len(x)
        yield idx, clf.predict_purified(x, gp)


def train(*args: Any, callback: Any = None, **kwargs: Any) -> ClassifierBundle:
    """Plain-function form of :func:`iter_train`."""
    return run(iter_train(*args, **kwargs), callback)


def predict(*args: Any, callback: Any = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Plain-function form of :func:`iter_predict`."""
    return run(iter_predict(*args, **kwargs), callback)


def iter_evaluate(
    cube: Cube,
    gt: np.ndarray,
    split: str = "random:0.1",
    seed: int = 827,
    model: DiffusionModel | None = None,
    preset: str = "cpu",
    pretrain_steps: int | None = None,
    pretrain_seed: int = 0,
    device: str = "auto",
    spec: FeatureSpec | None = None,
    cache_dir: str | Path | bool | None = False,
    baselines: tuple[str, ...] = ("linear", "svm", "rf"),
    class_names: list[str] | None = None,
    **classifier_kwargs: Any,
) -> Generator[Progress, None, dict[str, Any]]:
    """The whole method on one cube with ground truth, scored on test pixels only.

    Pretrains first when no ``model`` is given, with ``pretrain_seed``: pretraining sees no labels,
    so its seed is independent of the split's ``seed``. Returns the report the CLI prints and saves:
    ``oa``, ``aa``, ``kappa`` (x100), ``per_class_accuracy``, ``confusion_matrix``, ``n_train``,
    ``n_test``, ``timings_s``, ``peak_rss_mb``, ``config``, ``baselines``, plus the maps.
    """
    from .metrics import scores
    from .pretrain import iter_pretrain
    from .splits import make_split

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    gt = np.asarray(gt)
    if gt.shape != tuple(cube.data.shape[:2]):
        raise InputError(
            f"the ground truth is {gt.shape[0]} x {gt.shape[1]} but the cube {cube.name!r} is "
            f"{cube.data.shape[0]} x {cube.data.shape[1]}"
        )
    train_mask, test_mask = make_split(gt, split, seed=seed)
    train_labels = np.where(train_mask, gt, 0)
    if model is None:
        t0 = time.perf_counter()
        model = yield from forward(
            iter_pretrain(
                cube, preset=preset, steps=pretrain_steps, device=device, seed=pretrain_seed
            )
        )
        timings["pretrain"] = time.perf_counter() - t0
    else:
        timings["pretrain"] = 0.0
    spec = spec or FeatureSpec()
    with _cache_root(cache_dir) as root:
        t0 = time.perf_counter()
        if spec.mode == "patch":  # the reference: one window per pixel, labelled pixels only
            from .features import iter_extract_pixels

            coords, _ = labelled_pixels(gt)
            c, g = yield from iter_extract_pixels(model, cube, coords, spec, device)
            store = PixelFeatures(coords, c, g, gt.shape)
        else:
            store = yield from iter_features(model, cube, spec, device, root)
        timings["features"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        bundle = yield from iter_train(
            model,
            cube,
            train_labels,
            spec,
            class_names=class_names,
            device=device,
            seed=seed,
            store=store,
            **classifier_kwargs,
        )
        timings["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        class_map, confidence = yield from iter_predict(bundle, cube, device, store=store)
        timings["predict"] = time.perf_counter() - t0

        test_coords, y_test = labelled_pixels(np.where(test_mask, gt, 0))
        labels = sorted(int(v) for v in np.unique(gt[gt > 0]))
        y_pred = class_map[test_coords[:, 0], test_coords[:, 1]]
        report = scores(y_test, y_pred, labels=labels)
        report["baselines"] = yield from _iter_baselines(
            baselines,
            cube,
            store,
            gt,
            train_mask,
            test_coords,
            y_test,
            labels,
            seed,
            classifier_kwargs.get("k") or bundle.classifier.k,
        )
    timings["total"] = time.perf_counter() - t_start
    report.update(
        n_train=int(train_mask.sum()),
        n_test=int(test_mask.sum()),
        timings_s={k: round(v, 2) for k, v in timings.items()},
        peak_rss_mb=round(peak_rss_mb(), 1),
        config={
            "cube": cube.name,
            "split": split,
            "seed": seed,
            "preset": model.config.get("preset"),
            "pretrain_steps": model.config.get("step"),
            "pretrain_seed": model.config.get("seed"),
            "spec": spec.to_dict(),
            "classifier": bundle.classifier.hyperparameters(),
            "device": device,
            "versions": _versions(),
        },
        class_map=class_map,
        confidence=confidence,
        train_mask=train_mask,
        test_mask=test_mask,
        bundle=bundle,
    )
    return report


def _iter_baselines(
    names: tuple[str, ...],
    cube: Cube,
    store: FeatureStore,
    gt: np.ndarray,
    train_mask: np.ndarray,
    test_coords: np.ndarray,
    y_test: np.ndarray,
    labels: list[int],
    seed: int,
    k: int,
) -> Generator[Progress, None, dict[str, Any]]:
    """The comparison heads on the same split: a linear probe on purified diffusion features and
    spectral baselines on the raw spectra."""
    from . import baselines as bl
    from .metrics import scores

    out: dict[str, Any] = {}
    train_coords, y_train = labelled_pixels(np.where(train_mask, gt, 0))
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        if name == "linear":
            model = bl.LinearProbe(k=k, seed=seed)
            model.fit(*store.pixels(train_coords), y_train)
            y_pred = model.predict(*store.pixels(test_coords))
        elif name in ("svm", "rf"):
            spectra = np.asarray(cube.data, dtype=np.float32)
            x_train = spectra[train_coords[:, 0], train_coords[:, 1]]
            x_test = spectra[test_coords[:, 0], test_coords[:, 1]]
            cls = bl.SpectralSVM if name == "svm" else bl.SpectralRandomForest
            model = cls(seed=seed)
            model.fit(x_train, y_train)
            y_pred = model.predict(x_test)
        else:
            raise InputError(f"unknown baseline {name!r}: choose from linear, svm, rf")
        res = scores(y_test, y_pred, labels=labels)
        res["time_s"] = round(time.perf_counter() - t0, 2)
        out[name] = res
        yield {"stage": "baselines", "step": i + 1, "total": len(names), "baseline": name}
    return out


def evaluate(*args: Any, callback: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Plain-function form of :func:`iter_evaluate`."""
    return run(iter_evaluate(*args, **kwargs), callback)


def _versions() -> dict[str, str]:
    import sklearn
    import torch

    return {
        "napari-mtmsd": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
