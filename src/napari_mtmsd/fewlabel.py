"""A classifier sized to a few painted pixels: RBF-SVM on edge-aware smoothed pixel vectors.

The recipe (each step measured on its own in docs/benchmarks.md, "Few labels"):

1. per-pixel vectors ``(H, W, n)``: the scene embedding of the diffusion features
   (``embedding.FeatureEmbedding``), or, before any diffusion model exists, principal components
   of the spectra (the quick first map);
2. the vectors are smoothed along the scene's edges (``spatial.guided_filter``, radius 4): a
   pixel is described by its field rather than by its own noisy value;
3. an RBF-SVM (C = 10, ``gamma='scale'``) fitted on the labelled pixels: a handful of support
   vectors per class, which is what 5-20 labels per class can determine; its one-vs-rest
   decision values, divided by a temperature of 0.5, give class probabilities by a softmax
   (deterministic, no internal cross-validation, so it works from one pixel per class);
4. the probability map is regularised along the same edges (``spatial.regularise``, radius 6).

The SVM is saved as its training vectors and labels and refitted on load (libsvm without
probability estimates is deterministic): no pickle, a few kB.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, ModelFileError
from .spatial import guided_filter, regularise, scale_guide

TEMPERATURE = 0.5
FORMAT = "napari-mtmsd-fewlabel"
FORMAT_VERSION = 1
RECORD_FILE = "fewlabel.json"
ARRAYS_FILE = "arrays.safetensors"
_WHAT = "a directory written by FewLabelClassifier.save"
#: Principal components of the spectra for the quick map (no diffusion model yet).
SPECTRAL_COMPONENTS = 30
_FIT_PIXELS = 50_000


@dataclasses.dataclass
class SceneVectors:
    """Step 1: per-pixel vectors ``(H, W, n)`` of a scene and its guide image ``(H, W)``,
    computed once per scene and reused by every fit and prediction on it."""

    vectors: np.ndarray
    guide: np.ndarray

    @classmethod
    def of_spectra(
        cls, cube: Any, n_components: int = SPECTRAL_COMPONENTS, seed: int = 0
    ) -> SceneVectors:
        """Standardised principal components of the spectra: the quick first map's vectors
        (0 at invalid pixels, as the diffusion model's input, so the filters never spread a
        NaN)."""
        from .preprocess import Preprocessor, as_cube

        cube = as_cube(cube)
        n = min(n_components, int(cube.data.shape[2]))
        vectors = Preprocessor.fit(cube, n, max_pixels=_FIT_PIXELS, seed=seed).transform(cube.data)
        valid = np.asarray(cube.valid_mask(), bool)
        vectors[~valid] = 0.0
        np.nan_to_num(vectors, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return cls(vectors, scale_guide(vectors[..., 0], valid))

    @classmethod
    def of_features(cls, model: Any, cube: Any, store: Any, embedding: Any) -> SceneVectors:
        """The diffusion model's own input (its standardised principal components of the
        spectra) beside the whitened embedding of the scene's diffusion features."""
        return cls.of_parts(model.prepare(cube), embedding.transform(store), cube.valid_mask())

    @classmethod
    def of_parts(cls, prepared: np.ndarray, embedded: np.ndarray, valid: Any) -> SceneVectors:
        """:meth:`of_features` from the model's input ``prepared (H, W, C)`` and the embedded
        features ``(H, W, n)`` (the guide is the first component of ``prepared``)."""
        vectors = np.concatenate([prepared, embedded], axis=-1)
        return cls(vectors, scale_guide(prepared[..., 0], valid))


def classify(
    scene: SceneVectors, labels: np.ndarray, head: SpatialSVM | None = None
) -> tuple[SpatialSVM, np.ndarray]:
    """Steps 2-4 on ``scene`` with the painted ``labels (H, W)``: the fitted head and the
    regularised probabilities ``(H, W, K)``."""
    head = head or SpatialSVM()
    smoothed = head.smooth(scene.vectors, scene.guide)
    return head, head.fit(smoothed, labels).predict_proba(smoothed, scene.guide)


@dataclasses.dataclass
class SpatialSVM:
    """Steps 2-4 of the recipe above, on vectors ``(H, W, n)`` and a guide ``(H, W)``."""

    c: float = 10.0
    feature_radius: int = 4
    map_radius: int = 6
    eps: float = 1e-2
    x_train: np.ndarray | None = None  # (N, n) smoothed vectors of the training pixels
    y_train: np.ndarray | None = None  # (N,) their labels
    _svm: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def smooth(self, vectors: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """Step 2: the vectors filtered along the guide (compute once per scene)."""
        return guided_filter(vectors, guide, self.feature_radius, self.eps)

    def fit(self, smoothed: np.ndarray, labels: np.ndarray) -> SpatialSVM:
        """Fit on the pixels where ``labels (H, W)`` > 0 of ``smoothed`` vectors ``(H, W, n)``."""
        labels = np.asarray(labels)
        if labels.shape != smoothed.shape[:2]:
            raise InputError(f"labels of shape {labels.shape} for vectors of {smoothed.shape[:2]}")
        mask = labels > 0
        return self.fit_rows(smoothed[mask], labels[mask])

    def fit_rows(self, x: np.ndarray, y: np.ndarray) -> SpatialSVM:
        """Fit on smoothed vectors ``(N, n)`` of labelled pixels and their labels ``(N,)``."""
        self.x_train = np.asarray(x, np.float32)
        self.y_train = np.asarray(y).astype(np.int64)
        if len(np.unique(self.y_train)) < 2:
            raise InputError(
                "the few-label classifier needs labelled pixels of at least 2 classes"
            )
        self._svm = None
        return self

    @property
    def classes_(self) -> np.ndarray:
        return np.unique(self._fitted_y())

    def predict_proba_rows(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` of smoothed vectors ``(N, n)`` (no map regularisation)."""
        decision = self._model().decision_function(np.asarray(rows, np.float32))
        if decision.ndim == 1:  # two classes: one signed distance
            decision = np.stack([-decision, decision], axis=1)
        z = decision / TEMPERATURE
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict_proba(self, smoothed: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """Regularised class probabilities ``(H, W, K)`` (columns in ``classes_`` order)."""
        H, W, n = smoothed.shape
        raw = self.predict_proba_rows(smoothed.reshape(H * W, n)).reshape(H, W, -1)
        return regularise(raw, guide, self.map_radius, self.eps)

    @property
    def halo(self) -> int:
        """Context a window of the scene needs on each side for its inside to come out as in
        the whole scene: a guided filter reads two box means deep, for the vectors and the map."""
        return 2 * (self.feature_radius + self.map_radius)

    def predict_window(
        self, vectors: np.ndarray, guide: np.ndarray, core: tuple[slice, slice]
    ) -> np.ndarray:
        """Regularised probabilities of the ``core`` of a window of raw vectors ``(h, w, n)``
        and its guide: the whole scene's values (to float rounding) where the window reaches
        ``halo`` pixels beyond the core or the scene's edge. The SVM runs only where the map's
        filter reads."""
        smoothed = self.smooth(vectors, guide)
        m = 2 * self.map_radius
        r0, c0 = max(0, core[0].start - m), max(0, core[1].start - m)
        near = (slice(r0, core[0].stop + m), slice(c0, core[1].stop + m))
        proba = self.predict_proba(smoothed[near], guide[near])
        return proba[core[0].start - r0 : core[0].stop - r0, core[1].start - c0 : core[1].stop - c0]

    def _fitted_y(self) -> np.ndarray:
        if self.y_train is None:
            raise InputError("the few-label classifier is not fitted")
        return self.y_train

    def _model(self) -> Any:
        if self._svm is None:
            from sklearn.svm import SVC

            self._svm = SVC(C=self.c, kernel="rbf", gamma="scale")
            self._svm.fit(self.x_train, self._fitted_y())
        return self._svm

    def to_arrays(self) -> dict[str, np.ndarray]:
        self._fitted_y()
        params = np.array([self.c, self.feature_radius, self.map_radius, self.eps], np.float64)
        return {"svm.params": params, "svm.x_train": self.x_train, "svm.y_train": self.y_train}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SpatialSVM:
        c, feature_radius, map_radius, eps = (float(v) for v in arrays["svm.params"])
        return cls(
            c,
            int(feature_radius),
            int(map_radius),
            eps,
            np.asarray(arrays["svm.x_train"], np.float32),
            np.asarray(arrays["svm.y_train"], np.int64),
        )


#: ``method="auto"`` takes the few-label head below this median of labelled pixels per class,
#: the paper's fusion ensemble from there on (docs/benchmarks.md, "Few labels": the head leads
#: at 5-20 labels per class, the ensemble at 10 % of Indian Pines, a median of 48 per class).
AUTO_MAX_PER_CLASS = 30


def resolve_method(method: str, labels: np.ndarray) -> str:
    """``"paper"`` or ``"few-label"`` for ``method`` (``"auto"`` decides from ``labels``)."""
    if method not in ("auto", "paper", "few-label"):
        raise InputError(f"method {method!r}: expected 'auto', 'paper' or 'few-label'")
    if method != "auto":
        return method
    counts = np.unique(np.asarray(labels)[np.asarray(labels) > 0], return_counts=True)[1]
    return "few-label" if len(counts) and np.median(counts) < AUTO_MAX_PER_CLASS else "paper"


@dataclasses.dataclass
class FewLabelClassifier:
    """The few-label MTMSD classifier: the embedding of the diffusion features (fitted on a
    scene's feature store, no labels) and the head fitted on the painted pixels; what a
    classifier bundle holds when its method is ``"few-label"``."""

    embedding: Any  # embedding.FeatureEmbedding
    head: SpatialSVM

    @property
    def classes_(self) -> np.ndarray:
        return self.head.classes_

    def hyperparameters(self) -> dict[str, Any]:
        h = self.head
        return {"n_components": self.embedding.n_components, "c": h.c, "temperature": TEMPERATURE,
                "feature_radius": h.feature_radius, "map_radius": h.map_radius, "eps": h.eps}  # fmt: skip

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**self.embedding.to_arrays(), **self.head.to_arrays()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FewLabelClassifier:
        from .embedding import FeatureEmbedding

        return cls(FeatureEmbedding.from_arrays(arrays), SpatialSVM.from_arrays(arrays))

    def save(self, path: str | Path) -> Path:
        """``path/``: ``fewlabel.json`` (format, classes, versions) and ``arrays.safetensors``."""
        from safetensors.numpy import save_file

        from ._atomic import atomic_dir
        from ._versioned import versions, write_json

        path = Path(path)
        with atomic_dir(path, kind="few-label classifier") as tmp:
            record = {"format": FORMAT, "classes": self.classes_.tolist(), "versions": versions()}
            write_json(tmp / RECORD_FILE, FORMAT_VERSION, record)
            save_file(self.to_arrays(), str(tmp / ARRAYS_FILE), metadata={"format": FORMAT})
        return path

    @classmethod
    def load(cls, path: str | Path) -> FewLabelClassifier:
        """Read what :meth:`save` wrote; ModelFileError naming a missing or damaged file."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from ._atomic import verify
        from ._versioned import read_json

        path = Path(path)
        record = read_json(path / RECORD_FILE, FORMAT_VERSION, _WHAT, "train it again")
        if record.get("format") != FORMAT:
            raise ModelFileError(f"{path / RECORD_FILE}: not a few-label classifier ({_WHAT})")
        try:
            clf = cls.from_arrays(load_file(str(path / ARRAYS_FILE)))
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise ModelFileError(f"{path / ARRAYS_FILE}: missing or damaged ({exc})") from exc
        if clf.classes_.tolist() != record.get("classes"):
            raise ModelFileError(f"{path}: its arrays and its record name other classes")
        verify(path)  # the arrays' bytes, which a load that succeeds cannot check
        return clf


@dataclasses.dataclass
class FewLabelScene:
    """A scene made ready for the few-label head once, then fitted and predicted on by every
    Update: its feature store, the embedding, the vectors and their smoothing."""

    store: Any
    embedding: Any
    vectors: SceneVectors
    smoothed: np.ndarray

    @classmethod
    def of(cls, store: Any, embedding: Any, vectors: SceneVectors) -> FewLabelScene:
        return cls(store, embedding, vectors, SpatialSVM().smooth(vectors.vectors, vectors.guide))

    def fits(self, store: Any, embedding: Any = None) -> bool:
        """Whether this was made from ``store`` (and ``embedding``, when one is given)."""
        return store is self.store and (embedding is None or embedding is self.embedding)

    def fit(self, labels: np.ndarray) -> FewLabelClassifier:
        """The few-label classifier of the painted ``labels (H, W)``."""
        return FewLabelClassifier(self.embedding, SpatialSVM().fit(self.smoothed, labels))

    def predict(self, clf: FewLabelClassifier, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class map ``(H, W)`` int32 (0 where not ``valid``) and confidence ``(H, W)`` float32
        (the regularised probability of the class)."""
        proba = clf.head.predict_proba(self.smoothed, self.vectors.guide)
        return maps_of(clf.classes_, proba, valid)


    def predict_rows(
        self, clf: FewLabelClassifier, valid: np.ndarray, rows: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` of the scene rows ``rows[0]:rows[1]`` alone (the map's filter reads
        ``2 map_radius`` rows beyond them): a prediction streamed band by band."""
        head, (a, b) = clf.head, rows
        vectors = self.smoothed
        lo, hi = max(0, a - 2 * head.map_radius), min(len(vectors), b + 2 * head.map_radius)
        proba = head.predict_proba(vectors[lo:hi], self.vectors.guide[lo:hi])
        return maps_of(clf.classes_, proba[a - lo : b - lo], valid[a:b])


def maps_of(
    classes: np.ndarray, proba: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Class map ``(H, W)`` int32 (0 where not ``valid``) and confidence ``(H, W)`` float32 (the
    probability of the class) from probabilities ``(H, W, K)`` over ``classes``."""
    best = proba.argmax(axis=-1)
    class_map = np.where(valid, classes[best], 0).astype(np.int32)
    confidence = np.take_along_axis(proba, best[..., None], axis=-1)[..., 0]
    return class_map, np.where(valid, confidence, 0.0).astype(np.float32)
