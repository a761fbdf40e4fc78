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
    """A class map (H, W) int32 (0 = invalid pixel) and its confidence (H, W) float32."""

    class_map: np.ndarray
    confidence: np.ndarray


@dataclasses.dataclass
class UpdatePlan:
    """What an Update does: continue ``warm_start`` (with the ``classifier`` keywords: its
    epochs), or train afresh (``reason`` says why when an Update was asked for)."""

    warm_start: ClassifierBundle | None
    classifier: dict[str, Any]
    reason: str | None

    @property
    def name(self) -> str:
        return "Update" if self.warm_start is not None else "Update (full training)"


def plan_update(
    bundle: ClassifierBundle | None,
    model: DiffusionModel,
    spec: FeatureSpec,
    labels: np.ndarray,
    config: ClassifierConfig,
) -> UpdatePlan:
    """The Update policy: continue ``bundle`` for ``update_epochs`` when it was trained on this
    model and spec and knows exactly the classes of ``labels``; otherwise a full training with
    the configured ensemble and epochs."""
    from .pipeline import warm_start_mismatch

    reason = (
        "no classifier yet" if bundle is None else warm_start_mismatch(bundle, model, spec, labels)
    )
    if reason is None:
        return UpdatePlan(bundle, {"epochs": config.update_epochs}, None)
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
    inputs: FitInputs, plan: UpdatePlan, labels: np.ndarray, store: Any, reuse: dict
) -> Generator[Progress, None, Fitted]:
    """Features (``store``, else from the cache), training as ``plan`` says, the class map."""
    from .pipeline import iter_features, iter_predict, iter_train

    model, cube, spec, device = inputs.model, inputs.cube, inputs.spec, inputs.device
    if store is None:
        store = yield from iter_features(model, cube, spec, device, inputs.cache_dir)
    bundle = yield from iter_train(
        model, cube, labels, spec, class_names=inputs.class_names, colors=inputs.colors,
        device=device, store=store, warm_start=plan.warm_start, **plan.classifier,
    )  # fmt: skip
    class_map, confidence = yield from iter_predict(bundle, cube, device, store=store, reuse=reuse)
    return Fitted(store, reuse, bundle, labels, Prediction(class_map, confidence))
