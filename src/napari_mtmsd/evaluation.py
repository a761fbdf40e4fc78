"""The whole method on a cube with ground truth, scored on test pixels only, beside the
baselines; the report the CLI prints and saves (``evaluate``, ``demo``) and the benchmarks read."""

from __future__ import annotations

import contextlib
import functools
import json
import resource
import tempfile
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._console import run_with_bar
from ._progress import Callback, Progress, forward, imported
from ._versioned import versions
from .errors import InputError
from .features import FeatureSpec
from .pipeline import (
    FeatureSource,
    PixelFeatures,
    default_k,
    iter_features,
    iter_predict,
    iter_train,
    labelled_pixels,
)

if TYPE_CHECKING:
    from .io import Cube
    from .model import DiffusionModel

BASELINE_NAMES = {
    "linear": "linear probe",
    "svm": "RBF-SVM (spectra)",
    "rf": "random forest (spectra)",
}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _cache_root(cache_dir: str | Path | bool | None) -> Iterator[Path | None]:
    """``None``: the user cache; ``False``: a temp directory removed afterwards; else that path."""
    if cache_dir is False:
        with tempfile.TemporaryDirectory(prefix="napari-mtmsd-") as d:
            yield Path(d)
    else:
        yield None if cache_dir in (None, True) else Path(cache_dir)


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
    engine: Any = None,
    **classifier_kwargs: Any,
) -> Generator[Progress, None, dict[str, Any]]:
    """The whole method on one cube with ground truth, scored on test pixels only.

    Pretrains first when no ``model`` is given, with ``pretrain_seed``: pretraining sees no labels,
    so its seed is independent of the split's ``seed``. Returns the report the CLI prints and saves:
    ``oa``, ``aa``, ``kappa`` (x100), ``per_class_accuracy``, ``confusion_matrix``, ``n_train``,
    ``n_test``, ``timings_s``, ``peak_rss_mb``, ``config``, ``baselines``, plus the maps.
    ``engine`` (``distributed.DaskEngine``) predicts the scene's tiles as dask tasks.
    """
    from .pretrain import iter_pretrain
    from .splits import make_split

    t_start = time.perf_counter()
    timings = {"pretrain": 0.0}
    gt = _check_gt(cube, gt)
    train_mask, test_mask = make_split(gt, split, seed=seed)
    if model is None:
        t0 = time.perf_counter()
        model = yield from forward(
            iter_pretrain(
                cube, preset=preset, steps=pretrain_steps, device=device, seed=pretrain_seed
            )
        )
        timings["pretrain"] = time.perf_counter() - t0
    spec = spec or FeatureSpec()
    with _cache_root(cache_dir) as root:
        t0 = time.perf_counter()
        store = yield from _iter_source(model, cube, gt, spec, device, root)
        timings["features"] = time.perf_counter() - t0
        report = yield from _iter_score(
            model, cube, gt, (train_mask, test_mask), spec, store, device, seed, class_names,
            baselines, timings, classifier_kwargs, engine,
        )  # fmt: skip
    timings["total"] = time.perf_counter() - t_start
    report.update(
        n_train=int(train_mask.sum()),
        n_test=int(test_mask.sum()),
        timings_s={k: round(v, 2) for k, v in timings.items()},
        peak_rss_mb=round(peak_rss_mb(), 1),
        config=_config(cube, model, split, seed, spec, report["bundle"], device),
        train_mask=train_mask,
        test_mask=test_mask,
    )
    return report


def _check_gt(cube: Cube, gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.shape != tuple(cube.data.shape[:2]):
        raise InputError(
            f"the ground truth is {gt.shape[0]} x {gt.shape[1]} but the cube {cube.name!r} is "
            f"{cube.data.shape[0]} x {cube.data.shape[1]}"
        )
    return gt


def _iter_source(
    model: DiffusionModel,
    cube: Cube,
    gt: np.ndarray,
    spec: FeatureSpec,
    device: str,
    root: Path | None,
) -> Generator[Progress, None, FeatureSource]:
    """Dense whole-scene features, or in patch mode (the reference: one window per pixel) the
    labelled pixels' only."""
    if spec.mode != "patch":
        return (yield from iter_features(model, cube, spec, device, root))
    from .features import iter_extract_pixels

    coords, _ = labelled_pixels(gt)
    c, g = yield from iter_extract_pixels(model, cube, coords, spec, device)
    return PixelFeatures(coords, c, g, gt.shape)


def _iter_score(
    model: DiffusionModel,
    cube: Cube,
    gt: np.ndarray,
    masks: tuple[np.ndarray, np.ndarray],
    spec: FeatureSpec,
    store: FeatureSource,
    device: str,
    seed: int,
    class_names: list[str] | None,
    baselines: tuple[str, ...],
    timings: dict[str, float],
    classifier_kwargs: dict[str, Any],
    engine: Any = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Train on the training mask, predict the scene, score the test pixels and the baselines."""
    yield from imported(f"{__package__}.metrics", {"stage": "train", "step": 0, "total": 0})
    from .metrics import scores

    train_mask, test_mask = masks
    t0 = time.perf_counter()
    bundle = yield from iter_train(
        model, cube, np.where(train_mask, gt, 0), spec, class_names=class_names, device=device,
        seed=seed, store=store, **classifier_kwargs,
    )  # fmt: skip
    timings["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    class_map, confidence = yield from iter_predict(bundle, cube, device, store=store, engine=engine)
    timings["predict"] = time.perf_counter() - t0

    test_coords, y_test = labelled_pixels(np.where(test_mask, gt, 0))
    labels = sorted(int(v) for v in np.unique(gt[gt > 0]))
    report = scores(y_test, class_map[test_coords[:, 0], test_coords[:, 1]], labels=labels)
    k = classifier_kwargs.get("k") or default_k(store.shape[-1])
    train = labelled_pixels(np.where(train_mask, gt, 0))
    report["baselines"] = yield from _iter_baselines(
        baselines, cube, store, train, (test_coords, y_test), labels, seed, k
    )
    report.update(class_map=class_map, confidence=confidence, bundle=bundle)
    return report


def _config(
    cube: Cube,
    model: DiffusionModel,
    split: str,
    seed: int,
    spec: FeatureSpec,
    bundle: Any,
    device: str,
) -> dict[str, Any]:
    return {
        "cube": cube.name,
        "split": split,
        "seed": seed,
        "preset": model.config.get("preset"),
        "pretrain_steps": model.config.get("step"),
        "pretrain_seed": model.config.get("seed"),
        "spec": spec.to_dict(),
        "classifier": {"method": bundle.method, **bundle.classifier.hyperparameters()},
        "device": device,
        "versions": versions(),
    }


def _iter_baselines(
    names: tuple[str, ...],
    cube: Cube,
    store: FeatureSource,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    labels: list[int],
    seed: int,
    k: int,
) -> Generator[Progress, None, dict[str, Any]]:
    """The comparison heads on the same split: a linear probe on purified diffusion features and
    spectral baselines on the raw spectra. ``train`` and ``test``: pixel coords and labels.
    Records about every quarter second of work (``baselines.iter_fit``; pixels read and predicted
    ``_CHUNK`` at a time): ``step`` counts hundredths of a baseline."""
    # scikit-learn's metrics and estimators take 1-2 s of work to import: in a thread, with records
    record = {"stage": "baselines", "step": 0, "total": 100 * len(names)}
    for module in ("metrics", "baselines"):
        yield from imported(f"{__package__}.{module}", record)
    from . import baselines as bl
    from .metrics import scores

    (train_coords, y_train), (test_coords, y_test) = train, test
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        if name not in ("linear", "svm", "rf"):
            raise InputError(f"unknown baseline {name!r}: choose from linear, svm, rf")
        try:  # a failing comparison is reported as failed; the rest of the report is kept
            if name == "linear":
                model: Any = bl.LinearProbe(k=k, seed=seed)
                inputs: Any = store.pixels
            else:
                model = (bl.SpectralSVM if name == "svm" else bl.SpectralRandomForest)(seed=seed)
                inputs = functools.partial(_spectra_at, cube)
            x_train = yield from _scaled(_iter_read(inputs, train_coords), name, i, len(names),
                                         (0, 10))  # fmt: skip
            fitting = model.iter_fit(*x_train, y_train)
            yield from _scaled(fitting, name, i, len(names), (10, 80))
            predicting = _iter_predict(model, inputs, test_coords)
            y_pred = yield from _scaled(predicting, name, i, len(names), (80, 100))
            res = scores(y_test, y_pred, labels=labels)
        except Exception as e:  # sklearn, numpy and memory failures alike
            res = {"failed": f"{type(e).__name__}: {e}"}
        res["time_s"] = round(time.perf_counter() - t0, 2)
        out[name] = res
        yield {"stage": "baselines", "step": 100 * (i + 1), "total": 100 * len(names),
               "baseline": name}  # fmt: skip
    return out


#: Pixels read (and predicted) between two records: about 0.2 s of the linear probe's.
_CHUNK = 256


def _iter_read(inputs: Any, coords: np.ndarray) -> Generator[Progress, None, tuple]:
    """A model's inputs at ``coords``, read ``_CHUNK`` pixels at a time, a record after each."""
    parts = []
    for s in range(0, len(coords), _CHUNK):
        parts.append(inputs(coords[s : s + _CHUNK]))
        yield {"step": min(s + _CHUNK, len(coords)), "total": len(coords)}
    return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


def _iter_predict(
    model: Any, inputs: Any, coords: np.ndarray
) -> Generator[Progress, None, np.ndarray]:
    """Labels of the pixels at ``coords``, ``_CHUNK`` at a time, a record after each."""
    parts = []
    for s in range(0, len(coords), _CHUNK):
        parts.append(model.predict(*inputs(coords[s : s + _CHUNK])))
        yield {"step": s + len(parts[-1]), "total": len(coords)}
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _scaled(
    gen: Generator[Progress, None, Any], name: str, i: int, n: int, span: tuple[int, int]
) -> Generator[Progress, None, Any]:
    """A baseline's records as hundredths of all baselines: its ``span`` of baseline ``i``."""
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        frac = record["step"] / max(record["total"], 1)
        step = 100 * i + span[0] + int((span[1] - span[0]) * frac)
        yield {"stage": "baselines", "step": step, "total": 100 * n, "baseline": name}


def _spectra_at(cube: Cube, coords: np.ndarray) -> tuple[np.ndarray]:
    """A model's input: (N, B) float32 spectra of the pixels at ``coords`` (row, col), read a few rows at a time
    (the cube may be memory-mapped and larger than memory)."""
    from .io._types import row_chunks

    out = np.empty((len(coords), cube.data.shape[2]), np.float32)
    chunks = row_chunks(cube.data.shape, cube.data.dtype.itemsize)
    for r0 in chunks:
        mine = np.flatnonzero((coords[:, 0] >= r0) & (coords[:, 0] < r0 + chunks.step))
        if len(mine):
            rows = np.asarray(cube.data[r0 : r0 + chunks.step])
            out[mine] = rows[coords[mine, 0] - r0, coords[mine, 1]]
    return (out,)


def evaluate(
    *args: Any, callback: Callback | None = None, progress: bool = True, **kwargs: Any
) -> dict[str, Any]:
    """Plain-function form of :func:`iter_evaluate`: a tqdm bar per stage unless
    ``progress=False`` or a ``callback`` sees the records."""
    return run_with_bar(iter_evaluate(*args, **kwargs), "Evaluate", progress, callback)


# the report ---------------------------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    """OA / AA / kappa of MTMSD and the baselines, pixel counts, times and peak memory."""
    rows = [("MTMSD", report), *report.get("baselines", {}).items()]
    lines = [f"\n{'method':<26}{'OA':>8}{'AA':>8}{'kappa':>8}"]
    for name, r in rows:
        label = BASELINE_NAMES.get(name, name)
        if "failed" in r:
            lines.append(f"{label:<26}  failed: {r['failed']}")
            continue
        lines.append(f"{label:<26}{r['oa']:8.2f}{r['aa']:8.2f}{r['kappa']:8.2f}")
    lines.append(
        f"\ntrain pixels {report['n_train']}, test pixels {report['n_test']} (scored on test only)"
    )
    t = report["timings_s"]
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    lines.append(f"peak RSS {report['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def save_report(
    report: dict[str, Any],
    json_path: str | Path | None,
    png_dir: str | Path | None,
    class_names: Sequence[str] | None,
    colors: Any,
) -> list[Path]:
    """The report as JSON (without the maps and the classifier) and the class map and
    confusion matrix as PNGs, where asked; the paths written."""
    from ._atomic import write_text
    from .metrics import plot_class_map, plot_confusion

    written = []
    if json_path:
        keep = {k: v for k, v in report.items() if not isinstance(v, np.ndarray) and k != "bundle"}
        write_text(json_path, json.dumps(keep, indent=1, default=_jsonable))
        written.append(Path(json_path))
    if png_dir:
        png_dir = Path(png_dir)
        names = list(class_names) if class_names else None
        title = f"MTMSD, OA {report['oa']:.2f}"
        cm = np.asarray(report["confusion_matrix"])
        written.append(
            plot_class_map(png_dir / "class_map.png", report["class_map"], names, colors, title)
        )
        written.append(plot_confusion(png_dir / "confusion_matrix.png", cm, names))
    return written


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
