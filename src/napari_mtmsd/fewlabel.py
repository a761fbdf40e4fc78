"""A classifier sized to a few painted pixels: RBF-SVMs on edge-aware smoothed pixel vectors,
their map regularised by a random walker from the painted pixels.

The recipe (each step measured on its own in docs/benchmarks.md, "Few labels"):

1. per-pixel vectors ``(H, W, n)``: the diffusion model's input (standardised principal
   components of the spectra) beside the scene embedding of its features
   (``embedding.FeatureEmbedding``), or, before any diffusion model exists, principal
   components of the spectra alone (the quick first map);
2. the vectors are smoothed along the scene's edges (``spatial.guided_filter``, radius 4): a
   pixel is described by its field rather than by its own noisy value;
3. an RBF-SVM (C = 10, ``gamma='scale'``) fitted on the labelled pixels: a handful of support
   vectors per class, which is what 5-20 labels per class can determine; its one-vs-rest
   decision values, divided by a temperature of 0.5, give class probabilities by a softmax
   (deterministic, no internal cross-validation, so it works from one pixel per class). A
   second SVM on the spectral components alone is averaged in at half weight: the two views
   err on different fields;
4. the probability map is regularised by the extended random walker (``spatial.random_walker``):
   smoothed along the same edges, and the painted pixels, when the map is of the scene they
   were painted on, hold their class and pull their field with them.

The SVMs are saved as their training vectors, labels and pixel positions and refitted on load
(libsvm without probability estimates is deterministic): no pickle, a few kB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import Progress, run
from .errors import InputError, ModelFileError
from .spatial import RW_REACH, guided_filter, random_walker, scale_guide

TEMPERATURE = 0.5
FORMAT = "napari-mtmsd-fewlabel"
FORMAT_VERSION = 2  # 2: the spectral view and the random walker
RECORD_FILE = "fewlabel.json"
ARRAYS_FILE = "arrays.safetensors"
_WHAT = "a directory written by FewLabelClassifier.save"
#: Principal components of the spectra for the quick map (no diffusion model yet).
SPECTRAL_COMPONENTS = 30
_FIT_PIXELS = 50_000
#: Pixels whose SVM probabilities are computed at once, and the side of the random walker's
#: blocks, in a prediction over a kept scene: a record every ~0.5 s of work.
ROWS_AT_ONCE = 16_384
BLOCK = 256


@dataclasses.dataclass
class SceneVectors:
    """Step 1: per-pixel vectors ``(H, W, n)`` of a scene, its guide image ``(H, W)`` and valid
    mask, computed once per scene and reused by every fit and prediction on it. The first
    ``n_spectral`` vector components are the spectral view of step 3 (0: no second view)."""

    vectors: np.ndarray
    guide: np.ndarray
    valid: np.ndarray | None = None
    n_spectral: int = 0

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
        return cls(vectors, scale_guide(vectors[..., 0], valid), valid)

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
        valid = np.asarray(valid, bool)
        return cls(vectors, scale_guide(prepared[..., 0], valid), valid, prepared.shape[-1])


def classify(
    scene: SceneVectors, labels: np.ndarray, head: SpatialSVM | None = None
) -> tuple[SpatialSVM, np.ndarray]:
    """Steps 2-4 on ``scene`` with the painted ``labels (H, W)``: the fitted head and the
    regularised probabilities ``(H, W, K)`` (the painted pixels hold their class)."""
    head = head or SpatialSVM(n_spectral=scene.n_spectral)
    smoothed = head.smooth(scene.vectors, scene.guide)
    head.fit(smoothed, labels)
    seeds = head.seed_image((0, 0), labels.shape)
    return head, head.predict_proba(smoothed, scene.guide, seeds, scene.valid)


@dataclasses.dataclass
class SpatialSVM:
    """Steps 2-4 of the recipe above, on vectors ``(H, W, n)`` and a guide ``(H, W)``.

    ``seeds`` are the training pixels' positions ``(N, 2)`` (rows of ``x_train``) in the scene
    whose ``Cube.sha256`` is ``scene``: the random walker holds them only in a map of that scene.
    """

    c: float = 10.0
    feature_radius: int = 4
    eps: float = 1e-2
    n_spectral: int = 0
    spectral_weight: float = 0.5
    edge: float = 1e-3
    gamma: float = 3e-3
    x_train: np.ndarray | None = None  # (N, n) smoothed vectors of the training pixels
    y_train: np.ndarray | None = None  # (N,) their labels
    seeds: np.ndarray | None = None  # (N, 2) their positions in the scene
    scene: str = ""
    _svms: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def smooth(self, vectors: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """Step 2: the vectors filtered along the guide (compute once per scene)."""
        return guided_filter(vectors, guide, self.feature_radius, self.eps)

    def fit(self, smoothed: np.ndarray, labels: np.ndarray, scene: str = "") -> SpatialSVM:
        """Fit on the pixels where ``labels (H, W)`` > 0 of ``smoothed`` vectors ``(H, W, n)``
        of the scene ``scene`` (its ``Cube.sha256``; "" when the map is made here and now)."""
        labels = np.asarray(labels)
        if labels.shape != smoothed.shape[:2]:
            raise InputError(f"labels of shape {labels.shape} for vectors of {smoothed.shape[:2]}")
        mask = labels > 0
        return self.fit_rows(smoothed[mask], labels[mask], np.argwhere(mask), scene)

    def fit_rows(
        self, x: np.ndarray, y: np.ndarray, seeds: np.ndarray | None = None, scene: str = ""
    ) -> SpatialSVM:
        """Fit on smoothed vectors ``(N, n)`` of labelled pixels, their labels ``(N,)`` and
        their positions ``(N, 2)`` in the scene ``scene`` (none: no pixel is held)."""
        self.x_train = np.asarray(x, np.float32)
        self.y_train = np.asarray(y).astype(np.int64)
        self.seeds = (
            None if seeds is None else np.ascontiguousarray(seeds, np.int64).reshape(-1, 2)
        )
        self.scene = str(scene)
        if len(np.unique(self.y_train)) < 2:
            raise InputError(
                "the few-label classifier needs labelled pixels of at least 2 classes"
            )
        self._svms = None
        return self

    @property
    def classes_(self) -> np.ndarray:
        return np.unique(self._fitted_y())

    def predict_proba_rows(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` of smoothed vectors ``(N, n)`` (step 3)."""
        rows = np.asarray(rows, np.float32)
        views = self._models()
        p = sum(w * _softmax(m.decision_function(rows[:, :k])) for m, k, w in views)
        return (p / sum(w for _, _, w in views)).astype(np.float32)

    def predict_proba(
        self,
        smoothed: np.ndarray,
        guide: np.ndarray,
        seeds: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """Regularised class probabilities ``(H, W, K)`` (columns in ``classes_`` order),
        holding the pixels of ``seeds (H, W)`` (class indices, -1 elsewhere: ``seed_image``)."""
        H, W, n = smoothed.shape
        raw = self.predict_proba_rows(smoothed.reshape(H * W, n)).reshape(H, W, -1)
        return random_walker(raw, guide, seeds, valid, self.edge, self.gamma)

    def seed_image(
        self, origin: tuple[int, int], shape: tuple[int, int], scene: str = ""
    ) -> np.ndarray | None:
        """The training pixels inside the window of ``shape`` at ``origin`` of the scene
        ``scene``, as class indices ``(h, w)`` (-1 elsewhere); None for another scene."""
        if self.seeds is None or scene != self.scene:
            return None
        out = np.full(shape, -1, np.int64)
        r, c = self.seeds[:, 0] - origin[0], self.seeds[:, 1] - origin[1]
        inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
        out[r[inside], c[inside]] = np.searchsorted(self.classes_, self._fitted_y()[inside])
        return out

    @property
    def halo(self) -> int:
        """Context a window of the scene needs on each side for its inside to come out as in
        the whole scene: the guided filter reads two box means deep, the random walker
        ``RW_REACH`` further."""
        return 2 * self.feature_radius + RW_REACH

    def predict_window(
        self,
        vectors: np.ndarray,
        guide: np.ndarray,
        core: tuple[slice, slice],
        seeds: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """Regularised probabilities of the ``core`` of a window of raw vectors ``(h, w, n)``,
        its guide, ``seed_image`` and valid mask: the whole scene's map (to the random walker's
        tolerance, ``spatial.RW_REACH``) where the window reaches ``halo`` pixels beyond the
        core or the scene's edge. The SVMs run only where the random walker reads."""
        smoothed = self.smooth(vectors, guide)
        m = RW_REACH
        r0, c0 = max(0, core[0].start - m), max(0, core[1].start - m)
        near = (slice(r0, core[0].stop + m), slice(c0, core[1].stop + m))
        proba = self.predict_proba(
            smoothed[near],
            guide[near],
            None if seeds is None else seeds[near],
            None if valid is None else valid[near],
        )
        return proba[
            core[0].start - r0 : core[0].stop - r0, core[1].start - c0 : core[1].stop - c0
        ]

    def _fitted_y(self) -> np.ndarray:
        if self.y_train is None:
            raise InputError("the few-label classifier is not fitted")
        return self.y_train

    def _models(self) -> list[tuple[Any, int, float]]:
        """The fitted SVMs, each with the vector components it reads and its weight."""
        if self._svms is None:
            from sklearn.svm import SVC

            y = self._fitted_y()
            n = self.x_train.shape[1]
            views = [(n, 1.0)]
            if 0 < self.n_spectral < n and self.spectral_weight > 0:
                views.append((self.n_spectral, self.spectral_weight))
            self._svms = [
                (SVC(C=self.c, kernel="rbf", gamma="scale").fit(self.x_train[:, :k], y), k, w)
                for k, w in views
            ]
        return self._svms

    def to_arrays(self) -> dict[str, np.ndarray]:
        self._fitted_y()
        params = np.array([self.c, self.feature_radius, self.eps, self.n_spectral,
                           self.spectral_weight, self.edge, self.gamma], np.float64)  # fmt: skip
        seeds = np.zeros((0, 2), np.int64) if self.seeds is None else self.seeds
        scene = np.frombuffer(self.scene.encode("ascii"), np.uint8)
        return {"svm.params": params, "svm.x_train": self.x_train, "svm.y_train": self.y_train,
                "svm.seeds": seeds, "svm.scene": scene}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SpatialSVM:
        c, feature_radius, eps, n_spectral, weight, edge, gamma = (
            float(v) for v in arrays["svm.params"]
        )
        seeds = np.asarray(arrays["svm.seeds"], np.int64)
        return cls(
            c, int(feature_radius), eps, int(n_spectral), weight, edge, gamma,
            np.asarray(arrays["svm.x_train"], np.float32),
            np.asarray(arrays["svm.y_train"], np.int64),
            seeds if len(seeds) else None,
            bytes(np.asarray(arrays["svm.scene"], np.uint8)).decode("ascii"),
        )  # fmt: skip


def _softmax(decision: np.ndarray) -> np.ndarray:
    """Class probabilities from one-vs-rest decision values at ``TEMPERATURE``."""
    if decision.ndim == 1:  # two classes: one signed distance
        decision = np.stack([-decision, decision], axis=1)
    z = decision / TEMPERATURE
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


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
                "feature_radius": h.feature_radius, "eps": h.eps, "n_spectral": h.n_spectral,
                "spectral_weight": h.spectral_weight, "edge": h.edge, "gamma": h.gamma,
                "held_pixels": 0 if h.seeds is None else len(h.seeds)}  # fmt: skip

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
    Update: its feature store, the embedding, the vectors, their smoothing and the scene's
    ``Cube.sha256`` (the random walker holds a classifier's painted pixels only on it)."""

    store: Any
    embedding: Any
    vectors: SceneVectors
    smoothed: np.ndarray
    scene: str = ""

    @classmethod
    def of(
        cls, store: Any, embedding: Any, vectors: SceneVectors, scene: str = ""
    ) -> FewLabelScene:
        smoothed = SpatialSVM().smooth(vectors.vectors, vectors.guide)
        return cls(store, embedding, vectors, smoothed, scene)

    def fits(self, store: Any, embedding: Any = None) -> bool:
        """Whether this was made from ``store`` (and ``embedding``, when one is given)."""
        return store is self.store and (embedding is None or embedding is self.embedding)

    def fit(self, labels: np.ndarray) -> FewLabelClassifier:
        """The few-label classifier of the painted ``labels (H, W)``."""
        head = SpatialSVM(n_spectral=self.vectors.n_spectral)
        return FewLabelClassifier(self.embedding, head.fit(self.smoothed, labels, self.scene))

    def predict(self, clf: FewLabelClassifier, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class map ``(H, W)`` int32 (0 where not ``valid``) and confidence ``(H, W)`` float32
        (the regularised probability of the class)."""
        out = (np.zeros(valid.shape, np.int32), np.zeros(valid.shape, np.float32))
        return run(self.iter_predict(clf, valid, out))

    def iter_predict(
        self, clf: FewLabelClassifier, valid: np.ndarray, out: tuple[np.ndarray, np.ndarray]
    ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        """:meth:`predict` into ``out`` as a job: the SVMs' probabilities ``ROWS_AT_ONCE``
        pixels at a time, then the random walker ``BLOCK`` x ``BLOCK`` pixels at a time (each
        block with ``RW_REACH`` of context), a record and a finished region of the map after
        each."""
        head, guide = clf.head, self.vectors.guide
        H, W, n = self.smoothed.shape
        raw = np.empty((H, W, len(clf.classes_)), np.float32)
        rows = max(1, ROWS_AT_ONCE // W)
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            raw[r0:r1] = head.predict_proba_rows(self.smoothed[r0:r1].reshape(-1, n)).reshape(
                r1 - r0, W, -1
            )
            yield {"stage": "predict", "step": r1 * W, "total": 2 * H * W}
        done = H * W
        for b0 in range(0, H, BLOCK):
            for c0 in range(0, W, BLOCK):
                core = (slice(b0, min(H, b0 + BLOCK)), slice(c0, min(W, c0 + BLOCK)))
                win = tuple(slice(max(0, s.start - RW_REACH), s.stop + RW_REACH) for s in core)
                origin = (win[0].start, win[1].start)
                seeds = head.seed_image(origin, raw[win].shape[:2], self.scene)
                proba = random_walker(
                    raw[win], guide[win], seeds, valid[win], head.edge, head.gamma
                )
                at = tuple(
                    slice(s.start - o, s.stop - o) for s, o in zip(core, origin, strict=True)
                )
                out[0][core], out[1][core] = maps_of(clf.classes_, proba[at], valid[core])
                done += (core[0].stop - b0) * (core[1].stop - c0)
                region = ((b0, core[0].stop), (c0, core[1].stop))
                yield {"stage": "predict", "step": done, "total": 2 * H * W, "region": region}
        return out


def maps_of(
    classes: np.ndarray, proba: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Class map ``(H, W)`` int32 (0 where not ``valid``) and confidence ``(H, W)`` float32 (the
    probability of the class) from probabilities ``(H, W, K)`` over ``classes``."""
    best = proba.argmax(axis=-1)
    class_map = np.where(valid, classes[best], 0).astype(np.int32)
    confidence = np.take_along_axis(proba, best[..., None], axis=-1)[..., 0]
    return class_map, np.where(valid, confidence, 0.0).astype(np.float32)
