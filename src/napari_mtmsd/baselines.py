"""Comparison heads with the classifier's API (``fit``, ``predict``, ``predict_proba``).

``iter_fit`` is each fit as a job (``fit`` drives it): it yields ``{"stage", "step", "total"}``
records at least every quarter second. The random forest grows its trees in batches
(``warm_start``, the same forest as one fit); the linear probe's L-BFGS and the SVM's grid search
and calibration cannot be cut, so they run in a thread while the job yields records
(``_progress.waiting``): a Stop returns at once, and the fit finishes unseen (1.6-9 s on
Indian Pines, docs/reliability.md).

- ``LinearProbe``: multinomial logistic regression on the purified, flattened diffusion
  features (the same purification as MTMSD), standardised first: it tells how much the
  selective fusion adds over a linear read-out of the same channels.
- ``SpectralSVM`` / ``SpectralRandomForest``: classic baselines on the raw spectra ``(N, B)``,
  no diffusion model at all.

``SpectralSVM`` follows the usual recipe (StandardScaler -> PCA(30) -> RBF-SVC). Its ``C`` and
``gamma`` are chosen by a grid search with stratified 3-fold cross-validation on the training
pixels only (seeded shuffling; fewer folds when the rarest class has fewer than 3 pixels), the
grid being ``C`` in 1, 10, 100, 1000 and ``gamma`` in 0.25, 1, 4 times ``1 / n_components``
(the PCA scores are not rescaled, so ``1 / n_components`` is sklearn's ``gamma="auto"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ._progress import Progress, run, waiting
from .errors import InputError
from .purification import select_channels

#: Trees grown between two records (about 0.3 s on Indian Pines' spectra).
TREES_PER_BATCH = 50


def _check_labels(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise InputError(f"{len(y)} labels for {n} pixels: expected one label per pixel")
    if len(np.unique(y)) < 2:
        raise InputError("training labels hold fewer than 2 classes: expected at least 2")
    return y


def _spectra(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"spectra of shape {x.shape}: expected (N, B)")
    return x.astype(np.float64, copy=False)


class LinearProbe:
    """Logistic regression on the ``k`` purified channels of centre and global features."""

    def __init__(self, k: int = 768, c: float = 1.0, max_iter: int = 300, seed: int = 0):
        self.k, self.c, self.max_iter, self.seed = int(k), float(c), int(max_iter), int(seed)

    def fit(self, centre: np.ndarray, glob: np.ndarray, y: np.ndarray) -> LinearProbe:
        return run(self.iter_fit(centre, glob, y))

    def iter_fit(
        self, centre: np.ndarray, glob: np.ndarray, y: np.ndarray
    ) -> Generator[Progress, None, LinearProbe]:
        y = _check_labels(y, len(centre))
        self.idx_centre_ = select_channels(centre, y, self.k)
        self.idx_glob_ = select_channels(glob, y, self.k)
        yield _record(1, 2)
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.c, max_iter=self.max_iter, random_state=self.seed),
        )
        design = self._design(centre, glob)
        self.model_ = yield from waiting(lambda: model.fit(design, y), _record(1, 2))
        self.classes_ = self.model_.classes_
        return self

    def _design(self, centre: np.ndarray, glob: np.ndarray) -> np.ndarray:
        n = len(centre)
        parts = (
            np.asarray(centre)[:, :, self.idx_centre_],
            np.asarray(glob)[:, :, self.idx_glob_],
        )
        return np.concatenate([p.reshape(n, -1).astype(np.float32) for p in parts], axis=1)

    def predict(self, centre: np.ndarray, glob: np.ndarray) -> np.ndarray:
        return self.model_.predict(self._design(centre, glob))

    def predict_proba(self, centre: np.ndarray, glob: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(self._design(centre, glob))


class SpectralSVM:
    """StandardScaler -> PCA -> RBF-SVC on spectra, ``C``/``gamma`` by seeded CV on training pixels."""

    def __init__(
        self,
        n_components: int = 30,
        cs: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0),
        gamma_factors: tuple[float, ...] = (0.25, 1.0, 4.0),
        folds: int = 3,
        seed: int = 0,
    ):
        self.n_components, self.cs, self.gamma_factors = int(n_components), cs, gamma_factors
        self.folds, self.seed = int(folds), int(seed)

    def fit(self, spectra: np.ndarray, y: np.ndarray) -> SpectralSVM:
        return run(self.iter_fit(spectra, y))

    def iter_fit(
        self, spectra: np.ndarray, y: np.ndarray
    ) -> Generator[Progress, None, SpectralSVM]:
        return (yield from waiting(lambda: self._fit(spectra, y), _record(0, 1)))

    def _fit(self, spectra: np.ndarray, y: np.ndarray) -> SpectralSVM:
        x = _spectra(spectra)
        y = _check_labels(y, len(x))
        n_comp = min(self.n_components, x.shape[1], len(x))
        pipe = Pipeline(
            [
                ("scale", StandardScaler()),
                ("pca", PCA(n_comp, random_state=self.seed)),
                ("svc", SVC(kernel="rbf")),
            ]
        )
        grid = {
            "svc__C": list(self.cs),
            "svc__gamma": [f / n_comp for f in self.gamma_factors],
        }
        rarest = int(np.unique(y, return_counts=True)[1].min())
        folds = min(self.folds, max(rarest, 2))
        cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        with warnings.catch_warnings():
            # a class rarer than the fold count is expected (e.g. 2 Oats pixels in Indian Pines)
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            search = GridSearchCV(pipe, grid, cv=cv, n_jobs=1).fit(x, y)
            self.model_ = search.best_estimator_
            self.best_params_ = {k.split("__")[1]: v for k, v in search.best_params_.items()}
            # probabilities: Platt scaling of the chosen SVC on out-of-fold decision values;
            # labels stay the plain SVC's, as in the reference recipe
            calibrated = clone(pipe).set_params(
                svc=CalibratedClassifierCV(
                    SVC(kernel="rbf", **self.best_params_), cv=cv, ensemble=False
                )
            )
            self.proba_model_ = calibrated.fit(x, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, spectra: np.ndarray) -> np.ndarray:
        return self.model_.predict(_spectra(spectra))

    def predict_proba(self, spectra: np.ndarray) -> np.ndarray:
        return self.proba_model_.predict_proba(_spectra(spectra))


class SpectralRandomForest:
    """Random forest on the raw spectra (scale-free, so no preprocessing)."""

    def __init__(self, n_estimators: int = 300, seed: int = 0, n_jobs: int = 1):
        self.n_estimators, self.seed, self.n_jobs = int(n_estimators), int(seed), int(n_jobs)

    def fit(self, spectra: np.ndarray, y: np.ndarray) -> SpectralRandomForest:
        return run(self.iter_fit(spectra, y))

    def iter_fit(
        self, spectra: np.ndarray, y: np.ndarray
    ) -> Generator[Progress, None, SpectralRandomForest]:
        """Trees in batches of ``TREES_PER_BATCH`` (``warm_start`` draws each tree's seed as
        one fit would: the same forest), a record after each."""
        x = _spectra(spectra)
        y = _check_labels(y, len(x))
        model = RandomForestClassifier(
            0, warm_start=True, random_state=self.seed, n_jobs=self.n_jobs
        )
        for n in range(TREES_PER_BATCH, self.n_estimators + TREES_PER_BATCH, TREES_PER_BATCH):
            model.set_params(n_estimators=min(n, self.n_estimators)).fit(x, y)
            yield _record(len(model.estimators_), self.n_estimators)
        self.model_ = model
        self.classes_ = self.model_.classes_
        return self

    def predict(self, spectra: np.ndarray) -> np.ndarray:
        return self.model_.predict(_spectra(spectra))

    def predict_proba(self, spectra: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(_spectra(spectra))


def _record(step: int, total: int) -> dict[str, Any]:
    return {"stage": "baselines", "step": step, "total": total}
