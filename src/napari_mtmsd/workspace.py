"""The interactive session without Qt: one object holds what a user works on and decides what an
Update does; the napari panel, a script and a notebook drive the same loop.

```python
ws = Workspace(cube)
ws.pretrain(preset="cpu")          # or Workspace(cube, model=DiffusionModel.load(...))
ws.set_labels(labels)              # (H, W) ints, 0 = unlabelled
ws.update()                        # features (cached), a full training, the class map
ws.set_labels(more_labels)
ws.update()                        # continues the classifier: a few epochs (warm start)
ws.class_map, ws.confidence
```

A job that predicts fills its map in place (``update.PartialMap``, events ``partial`` and
``partial_region``); a Stop leaves it in ``ws.partial``, the last complete map in ``ws.prediction``.

Every long step exists as a :class:`Job`: ``steps`` (a progress generator, see ``_progress``)
computes without touching the workspace, so it may run in a worker thread; ``commit`` puts its
result into the workspace in the caller's thread, which then emits ``events`` (psygnal) for the
views to redraw. The plain methods (``pretrain``, ``extract``, ``update``, ...) do both, with a
tqdm bar unless ``progress=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal, SignalGroup

from ._job import Job
from ._progress import Progress
from .config import ClassifierConfig, PretrainConfig
from .errors import InputError
from .features import FeatureSpec
from .update import (
    FitInputs,
    Fitted,
    PartialMap,
    Prediction,
    UpdatePlan,
    iter_fit_and_map,
    iter_quick_map,
    plan_update,
)

if TYPE_CHECKING:
    from .bundle import ClassifierBundle
    from .cache import FeatureStore
    from .io import Cube
    from .model import DiffusionModel


class WorkspaceEvents(SignalGroup):
    """What changed; each signal is emitted after the state is in place, without arguments but
    for a map being predicted: ``partial`` (the ``PartialMap`` that started filling, in place)
    and ``partial_region`` (((r0, r1), (c0, c1)) of it just written)."""

    cube = Signal()
    model = Signal()
    spec = Signal()
    classes = Signal()
    features = Signal()
    classifier = Signal()
    prediction = Signal()
    partial = Signal(object)
    partial_region = Signal(object)


class Workspace:
    """Cube, diffusion model, feature spec, cached features, classes, training labels,
    classifier and prediction of one session, and the policy of its Update.

    The features belong to ``(model fingerprint, cube, spec)`` (:attr:`feature_key`): changing any
    of the three leaves :attr:`features` ``None`` until the next extraction (the on-disk cache
    makes a repeated one instant). ``device`` and ``cache_dir`` are passed to every job.
    """

    def __init__(
        self,
        cube: Cube | np.ndarray | None = None,
        model: DiffusionModel | None = None,
        spec: FeatureSpec | None = None,
        classifier: ClassifierConfig | None = None,
        device: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        self.events = WorkspaceEvents()
        self.device, self.cache_dir = device, cache_dir
        self.classifier_config = classifier or ClassifierConfig()
        self.cube: Cube | None = None
        self.model: DiffusionModel | None = None
        self.spec: FeatureSpec = spec or FeatureSpec()
        self.class_names: list[str] = []
        self.colors: np.ndarray = _palette(0)
        self.labels: np.ndarray | None = None
        self.bundle: ClassifierBundle | None = None
        self.prediction: Prediction | None = None
        self.partial: PartialMap | None = None  # being predicted, or left by a Stop
        self.train_labels_used: np.ndarray | None = None  # scores leave these pixels out
        self._store: Any | None = None
        self._store_key: tuple | None = None
        self._reuse: dict = {}  # purified scene kept between predictions (pipeline.iter_predict)
        self._spectral: Any | None = None  # the cube's vectors for quick maps (fewlabel)
        self._fingerprint: str | None = None
        self._cube_serial = 0  # which cube object: features are keyed by it
        if cube is not None:
            self.set_cube(cube)
        if model is not None:
            self.set_model(model)

    def __repr__(self) -> str:
        """One line of what is there, for a notebook or a log."""
        parts = [
            "no cube" if self.cube is None else f"cube {self.cube.name!r} {self.cube.shape}",
            "no model" if self.model is None else f"model #{(self._fingerprint or '')[:8]}",
            f"{len(self.class_names)} classes",
            "features cached" if self.features is not None else "no features",
        ]
        if self.labels is not None:
            parts.append(f"{int((self.labels > 0).sum())} labelled px")
        if self.bundle is not None:
            parts.append(f"classifier on {self.bundle.meta.get('n_train', '?')} px")
        return f"Workspace({', '.join(parts)})"

    # state -------------------------------------------------------------------------------
    def set_cube(self, cube: Cube | np.ndarray | None) -> None:
        from .preprocess import as_cube

        cube = None if cube is None else as_cube(cube)
        if cube is not self.cube:
            self.cube, self._cube_serial = cube, self._cube_serial + 1
            self._drop_features()
            self._spectral, self.partial = None, None
        self.events.cube.emit()
        self.events.features.emit()

    def set_model(self, model: DiffusionModel | None, fingerprint: str | None = None) -> None:
        """A new model (``fingerprint``: its ``fingerprint()`` when already known); the stages of
        the spec that it lacks are dropped (all gone: its first four decoder blocks)."""
        self.model = model
        self._fingerprint = fingerprint or (None if model is None else model.fingerprint())
        self._drop_features()
        if model is not None:
            n_blocks = len(model.unet.output_blocks)
            kept = tuple(s for s in self.spec.stages if s < n_blocks)
            if kept != self.spec.stages:
                self.set_spec(
                    dataclasses.replace(self.spec, stages=kept or tuple(range(min(n_blocks, 4))))
                )
        self.events.model.emit()
        self.events.features.emit()

    def set_spec(self, spec: FeatureSpec) -> None:
        if spec != self.spec:
            self.spec = spec
            self.events.spec.emit()
            self.events.features.emit()

    def set_classes(self, names: list[str], colors: np.ndarray | None = None) -> None:
        """Class names (label i + 1) and colours ``(K + 1, 3)``; missing colours come from the
        default palette, extra ones are dropped."""
        names = [str(n) for n in names]
        if colors is None or len(colors) != len(names) + 1:
            fresh = _palette(len(names))
            if colors is not None:
                keep = min(len(colors), len(fresh))
                fresh[:keep] = np.asarray(colors)[:keep]
            colors = fresh
        self.class_names, self.colors = names, np.asarray(colors, dtype=np.uint8)
        self.events.classes.emit()

    def set_labels(
        self,
        labels: np.ndarray,
        class_names: list[str] | None = None,
        colors: np.ndarray | None = None,
    ) -> None:
        """Training labels (H, W), 0 = unlabelled; classes beyond the named ones get names."""
        labels = np.asarray(labels)
        if self.cube is not None and labels.shape != tuple(self.cube.shape[:2]):
            raise InputError(
                f"training labels have shape {labels.shape}, expected the cube's rows x cols "
                f"{tuple(self.cube.shape[:2])}"
            )
        self.labels = labels.astype(np.int32, copy=False)
        names = list(class_names) if class_names is not None else list(self.class_names)
        top = int(self.labels.max(initial=0))
        names += [f"class {i}" for i in range(len(names) + 1, top + 1)]
        if names != self.class_names or colors is not None:
            self.set_classes(names, colors if colors is not None else self.colors)

    # features ----------------------------------------------------------------------------
    @property
    def feature_key(self) -> tuple | None:
        """What the features depend on: (model fingerprint, cube, spec); None without both."""
        if self.model is None or self.cube is None:
            return None
        return (self._fingerprint, self._cube_serial, self.spec)

    @property
    def features(self) -> FeatureStore | None:
        """The cached whole-scene features of the current model, cube and spec, if extracted."""
        key = self.feature_key
        return self._store if key is not None and key == self._store_key else None

    def _drop_features(self) -> None:
        self._store, self._store_key, self._reuse = None, None, {}

    def _ready(self) -> tuple[DiffusionModel, Cube, FeatureSpec]:
        """Model, cube and spec, checked; InputError naming what is missing."""
        if self.model is None:
            raise InputError("no diffusion model: pretrain or load one")
        if self.cube is None:
            raise InputError("no cube: give the workspace a cube")
        self.spec.validate(self.model)
        return self.model, self.cube, self.spec

    def extract_job(self) -> Job:
        """Whole-scene features into the on-disk cache (a cache hit returns at once)."""
        from .pipeline import iter_features

        model, cube, spec = self._ready()
        key = self.feature_key

        def commit(store: FeatureStore) -> FeatureStore:
            if store is not self._store:
                self._reuse = {}
            self._store, self._store_key = store, key
            self.events.features.emit()
            return store

        steps = iter_features(model, cube, spec, self.device, self.cache_dir)
        return Job("Extract features", steps, commit)

    # the model ---------------------------------------------------------------------------
    def pretrain_job(self, config: PretrainConfig | None = None, **settings: Any) -> Job:
        """Pretrain a diffusion model on the cube (``config`` or its fields as keywords)."""
        from .pretrain import iter_pretrain

        if self.cube is None:
            raise InputError("no cube: give the workspace a cube to pretrain on")
        config = dataclasses.replace(config or PretrainConfig(), **settings)
        cube, device = self.cube, self.device

        def steps() -> Generator[Progress, None, tuple[DiffusionModel, str]]:
            model = yield from iter_pretrain(cube, device=device, **config.pretrain_kwargs())
            # hashed here, in the job's thread: the new weights are channels-last, and making
            # them contiguous can start torch's thread team in the caller's (napari's main)
            return model, model.fingerprint()

        def commit(result: tuple[DiffusionModel, str]) -> DiffusionModel:
            self.set_model(*result)
            return result[0]

        return Job("Pretrain", steps(), commit)

    # training and the Update policy ----------------------------------------------------------
    def update_plan(self, labels: np.ndarray) -> UpdatePlan:
        """What an Update on ``labels`` does now (``update.plan_update``)."""
        model, _, spec = self._ready()
        return plan_update(self.bundle, model, spec, labels, self.classifier_config)

    def train_job(self) -> Job:
        """A full training on the training labels, then the class map of the cube; before any
        diffusion model exists, the quick map (:meth:`quick_map_job`)."""
        if self.model is None and self.cube is not None:
            return self.quick_map_job()
        plan = UpdatePlan(None, self.classifier_config.classifier_kwargs(), None)
        return self._fit_job("Train and predict", plan)

    def update_job(self) -> Job:
        """Train as :meth:`update_plan` decides, then the class map; ``Job.note`` says why it
        trains afresh; before any diffusion model exists, the quick map."""
        if self.model is None and self.cube is not None:
            return self.quick_map_job()
        self._ready()
        labels = self._training_labels()
        plan = self.update_plan(labels)
        note = None if plan.reason is None else f"Update trains a new classifier: {plan.reason}"
        return self._fit_job(plan.name, plan, note)

    def quick_map_job(self) -> Job:
        """A map in a second or two from the spectra alone (``update.iter_quick_map``), for a
        user who paints while the diffusion model pretrains; ``Prediction.method`` is
        ``"quick"`` until a training replaces it."""
        if self.cube is None:
            raise InputError("no cube: give the workspace a cube")
        labels = self._training_labels().copy()

        def commit(result: tuple[Any, Prediction]) -> Prediction:
            self._spectral, self.prediction = result
            self.events.prediction.emit()
            return self.prediction

        note = "no diffusion model yet: a quick map from the spectra"
        return Job("Quick map", iter_quick_map(self.cube, labels, self._spectral), commit, note)

    def _training_labels(self) -> np.ndarray:
        if self.labels is None:
            raise InputError("no training labels: paint some or call set_labels(labels)")
        return self.labels

    def _fit_job(self, name: str, plan: UpdatePlan, note: str | None = None) -> Job:
        """The Update's steps (``update.iter_fit_and_map``) on what the workspace holds now,
        its map filled in place as it is predicted."""
        inputs = self._inputs()
        labels = self._training_labels().copy()
        store = self.features
        reuse = self._reuse if store is not None else {}
        partial = PartialMap.zeros(inputs.cube.shape)

        def commit(fitted: Fitted) -> Prediction:
            self._store, self._store_key, self._reuse = fitted.store, inputs.key, fitted.reuse
            self.bundle, self.train_labels_used = fitted.bundle, fitted.labels
            self.prediction = fitted.prediction
            if self.partial is partial:
                self.partial = None
            self.events.features.emit()
            self.events.classifier.emit()
            self.events.prediction.emit()
            return fitted.prediction

        steps = iter_fit_and_map(inputs, plan, labels, store, reuse, partial.out)
        region = self.events.partial_region.emit
        return Job(name, steps, commit, note, partial, self._show_partial, region)

    def _show_partial(self, partial: PartialMap) -> None:
        self.partial = partial
        self.events.partial.emit(partial)

    def _inputs(self) -> FitInputs:
        """What a training job reads, taken when it is made (it may run later, elsewhere)."""
        model, cube, spec = self._ready()
        return FitInputs(
            model, cube, spec, self.feature_key, list(self.class_names), self.colors.copy(),
            self.device, self.cache_dir,
        )  # fmt: skip

    # prediction of other cubes, files ----------------------------------------------------------
    def predict_job(self, cube: Cube | np.ndarray) -> Job:
        """The class map of another cube with the current classifier, filled in place as it is
        predicted (``Job.partial``; the workspace keeps it not: ``commit`` returns the
        :class:`Prediction`)."""
        from .pipeline import iter_predict
        from .preprocess import as_cube

        bundle, cube = self._bundle(), as_cube(cube)
        partial = PartialMap.zeros(cube.shape)
        steps = iter_predict(bundle, cube, self.device, self.cache_dir, out=partial.out)
        events = self.events.partial.emit, self.events.partial_region.emit
        return Job("Predict", steps, lambda result: Prediction(*result), None, partial, *events)

    def _bundle(self) -> ClassifierBundle:
        if self.bundle is None:
            raise InputError("no classifier: train or load one first")
        return self.bundle

    def load_model(self, path: str | Path) -> DiffusionModel:
        """A saved diffusion model becomes the current one."""
        from .model import DiffusionModel

        model = DiffusionModel.load(path)
        self.set_model(model)
        return model

    def save_model(self, path: str | Path) -> Path:
        if self.model is None:
            raise InputError("no diffusion model to save: pretrain or load one first")
        return self.model.save(path)

    def save_classifier(self, path: str | Path) -> Path:
        return self._bundle().save(path)

    def load_classifier(self, path: str | Path) -> ClassifierBundle:
        """A saved classifier; its diffusion model, spec and classes become the current ones."""
        from .bundle import ClassifierBundle

        bundle = ClassifierBundle.load(path)
        self.set_model(bundle.model)
        self.set_spec(bundle.spec)
        if bundle.class_names:
            self.set_classes(list(bundle.class_names), bundle.colors)
        self.bundle = bundle
        self.events.classifier.emit()
        return bundle

    # scores --------------------------------------------------------------------------------
    def test_mask(self, gt: np.ndarray) -> np.ndarray:
        """The pixels a prediction is scored on: ground truth minus the training labels of the
        classifier that made it."""
        gt = np.asarray(gt)
        test = gt > 0
        used = self.train_labels_used
        if used is not None and used.shape == gt.shape:
            test &= used == 0
        return test

    def scores(self, gt: np.ndarray) -> dict[str, Any] | None:
        """OA / AA / kappa and the confusion matrix of the prediction on :meth:`test_mask`
        (None before any prediction); InputError when they cannot be scored."""
        from .metrics import score_map

        if self.prediction is None:
            return None
        gt, pred = np.asarray(gt), self.prediction.class_map
        if gt.shape != pred.shape:
            raise InputError(f"the ground truth is {gt.shape}, the prediction {pred.shape}")
        test = self.test_mask(gt)
        if not test.any():
            raise InputError("no ground-truth pixels outside the training labels")
        return score_map(gt, pred, test)

    # the same in one call each ----------------------------------------------------------------
    def pretrain(self, progress: bool = True, **settings: Any) -> DiffusionModel:
        """Pretrain (see :class:`config.PretrainConfig` for the settings)."""
        return self.pretrain_job(**settings).run(progress)

    def extract(self, progress: bool = True) -> FeatureStore:
        return self.extract_job().run(progress)

    def train(self, progress: bool = True) -> Prediction:
        return self.train_job().run(progress)

    def update(self, progress: bool = True) -> Prediction:
        return self.update_job().run(progress)

    def predict(self, cube: Cube | np.ndarray, progress: bool = True) -> Prediction:
        return self.predict_job(cube).run(progress)

    @property
    def class_map(self) -> np.ndarray | None:
        return None if self.prediction is None else self.prediction.class_map

    @property
    def confidence(self) -> np.ndarray | None:
        return None if self.prediction is None else self.prediction.confidence


def _palette(n_classes: int) -> np.ndarray:
    from .io import default_colors

    return default_colors(n_classes)
