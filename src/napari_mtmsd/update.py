"""What Train and Update compute, Qt-free: the policy (continue the classifier, or train
afresh and why), and the steps (features, training, class map) with their inputs and result.
``workspace.Workspace`` runs them on what it holds; further steps on the map (post-processing,
suggestions of where to paint, a first quick map) belong in :func:`iter_fit_and_map`."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import Progress
from .config import ClassifierConfig
from .features import FeatureSpec

if TYPE_CHECKING:
    from .bundle import ClassifierBundle
    from .io import Cube
    from .model import DiffusionModel


@dataclasses.dataclass
class Prediction:
    """A class map (H, W) int32 (0 = invalid pixel), its confidence (H, W) float32 and, after a
    training, where to paint next (``suggest.suggest``: (m, 2) row, col; best first)."""

    class_map: np.ndarray
    confidence: np.ndarray
    suggestions: np.ndarray | None = None
    method: str = "paper"


@dataclasses.dataclass
class PartialMap:
    """A class map being predicted: ``class_map`` (H, W) int32 and ``confidence`` (H, W)
    float32 are what ``pipeline.iter_predict(out=...)`` fills in place (zeros: not predicted
    yet), so a viewer shows them as they grow and a Stop keeps what is done; ``done`` counts
    the pixels of the regions reported finished."""

    class_map: np.ndarray
    confidence: np.ndarray
    done: int = 0

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> PartialMap:
        rows, cols = int(shape[0]), int(shape[1])
        return cls(np.zeros((rows, cols), np.int32), np.zeros((rows, cols), np.float32))

    @property
    def out(self) -> tuple[np.ndarray, np.ndarray]:
        return self.class_map, self.confidence

    @property
    def fraction(self) -> float:
        """The share of the scene predicted (finished regions do not overlap)."""
        return min(1.0, self.done / max(1, self.class_map.size))

    def add(self, region: tuple[tuple[int, int], tuple[int, int]]) -> None:
        (r0, r1), (c0, c1) = region
        self.done += (r1 - r0) * (c1 - c0)


@dataclasses.dataclass
class UpdatePlan:
    """What an Update does: continue ``warm_start`` (with the ``classifier`` keywords: its
    epochs), or train afresh (``reason`` says why when an Update was asked for)."""

    warm_start: ClassifierBundle | None
    classifier: dict[str, Any]
    reason: str | None

    @property
    def name(self) -> str:
        refit = self.warm_start is not None or self.reason is None
        return "Update" if refit else "Update (full training)"


def plan_update(
    bundle: ClassifierBundle | None,
    model: DiffusionModel,
    spec: FeatureSpec,
    labels: np.ndarray,
    config: ClassifierConfig,
) -> UpdatePlan:
    """The Update policy: the few-label head (``config.method`` resolved on ``labels``) is
    refitted on all labels; the paper's heads continue ``bundle`` for ``update_epochs`` when it
    was trained on this model and spec and knows exactly the classes of ``labels``, otherwise a
    full training with the configured ensemble and epochs."""
    from .fewlabel import resolve_method
    from .pipeline import warm_start_mismatch

    if resolve_method(config.method, labels) == "few-label":
        return UpdatePlan(None, {**config.classifier_kwargs(), "method": "few-label"}, None)
    reason = (
        "no classifier yet" if bundle is None else warm_start_mismatch(bundle, model, spec, labels)
    )
    if reason is None:
        return UpdatePlan(bundle, {"method": "paper", "epochs": config.update_epochs}, None)
    return UpdatePlan(None, config.classifier_kwargs(), reason)


@dataclasses.dataclass(frozen=True)
class FitInputs:
    """What a training job reads, taken when the job is made (it may run later, elsewhere)."""

    model: DiffusionModel
    cube: Cube
    spec: FeatureSpec
    key: tuple | None  # the feature key of these model, cube and spec
    class_names: list[str]
    colors: np.ndarray
    device: str
    cache_dir: str | Path | None


@dataclasses.dataclass
class Fitted:
    """What a training job made: the feature source (and the purified scene kept with it), the
    classifier, the labels it was trained on and the prediction."""

    store: Any
    reuse: dict
    bundle: ClassifierBundle
    labels: np.ndarray
    prediction: Prediction


def iter_fit_and_map(
    inputs: FitInputs,
    plan: UpdatePlan,
    labels: np.ndarray,
    store: Any,
    reuse: dict,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> Generator[Progress, None, Fitted]:
    """Features (``store``, else from the cache), training as ``plan`` says, the class map (into
    ``out`` as it is predicted, when given: see :class:`PartialMap`) and the places to paint
    next."""
    from .pipeline import iter_features, iter_predict, iter_train
    from .suggest import suggest

    model, cube, spec, device = inputs.model, inputs.cube, inputs.spec, inputs.device
    if store is None:
        store = yield from iter_features(model, cube, spec, device, inputs.cache_dir)
    bundle = yield from iter_train(
        model, cube, labels, spec, class_names=inputs.class_names, colors=inputs.colors,
        device=device, store=store, warm_start=plan.warm_start, reuse=reuse, **plan.classifier,
    )  # fmt: skip
    class_map, confidence = yield from iter_predict(
        bundle, cube, device, store=store, reuse=reuse, out=out
    )
    places, _ = suggest(1.0 - confidence, labels, class_map > 0)
    prediction = Prediction(class_map, confidence, places, bundle.method)
    return Fitted(store, reuse, bundle, labels, prediction)


def iter_quick_map(
    cube: Cube, labels: np.ndarray, spectral: Any | None
) -> Generator[Progress, None, tuple[Any, Prediction]]:
    """The first map, before any diffusion model exists: ``fewlabel``'s recipe on the spectra
    (``spectral``, the cube's ``fewlabel.SceneVectors``, made here when None and returned for
    the next quick map)."""
    from .fewlabel import SceneVectors, classify, maps_of
    from .suggest import suggest

    yield {"stage": "quick map", "step": 0, "total": 2}
    if spectral is None:
        spectral = SceneVectors.of_spectra(cube)
    yield {"stage": "quick map", "step": 1, "total": 2}
    head, proba = classify(spectral, labels)
    valid = np.asarray(cube.valid_mask())
    class_map, confidence = maps_of(head.classes_, proba, valid)
    places, _ = suggest(1.0 - confidence, labels, valid)
    yield {"stage": "quick map", "step": 2, "total": 2}
    return spectral, Prediction(class_map, confidence, places, "quick")
