import numpy as np
import pytest

from napari_mtmsd._progress import run
from napari_mtmsd.baselines import LinearProbe, SpectralRandomForest, SpectralSVM
from napari_mtmsd.errors import InputError


def _spectra(n=120, b=40, seed=0):
    """Three classes with distinct smooth mean spectra plus noise (labels 1..3)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(1, 4, n)
    bands = np.linspace(0, 1, b)
    means = np.stack([np.sin(3 * bands), np.cos(3 * bands), bands**2])
    return means[y - 1] + 0.15 * rng.normal(size=(n, b)), y


@pytest.mark.parametrize("cls", [SpectralSVM, SpectralRandomForest])
def test_spectral_baselines(cls):
    x, y = _spectra()
    x_test, y_test = _spectra(seed=1)
    model = cls(seed=0).fit(x, y)
    assert (model.predict(x_test) == y_test).mean() > 0.9
    proba = model.predict_proba(x_test)
    assert proba.shape == (len(y_test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert model.classes_.tolist() == [1, 2, 3]
    again = cls(seed=0).fit(x, y)
    np.testing.assert_array_equal(again.predict_proba(x_test), proba)


def test_svm_grid_search_with_a_rare_class():
    x, y = _spectra()
    y[:2] = 4  # a class with 2 training pixels: fewer CV folds, no failure
    model = SpectralSVM(n_components=10, seed=0).fit(x, y)
    assert set(model.best_params_) == {"C", "gamma"}
    assert model.predict(x).shape == y.shape


def test_linear_probe():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 4, 90)
    centre = rng.normal(size=(90, 3, 10))
    glob = rng.normal(size=(90, 3, 10))
    centre[np.arange(90), :, y] += 3.0
    probe = LinearProbe(k=4).fit(centre[:60], glob[:60], y[:60])
    assert len(probe.idx_centre_) == 4
    assert (probe.predict(centre[60:], glob[60:]) == y[60:]).mean() > 0.9
    assert probe.predict_proba(centre[60:], glob[60:]).shape == (30, 3)


def test_bad_inputs():
    x, y = _spectra()
    with pytest.raises(InputError, match="one label per pixel"):
        SpectralRandomForest().fit(x, y[:-1])
    with pytest.raises(InputError, match="expected \\(N, B\\)"):
        SpectralSVM().fit(x[:, :, None], y)
    with pytest.raises(InputError, match="fewer than 2 classes"):
        SpectralSVM().fit(x, np.ones_like(y))


def test_forest_grown_in_batches_is_the_forest_of_one_fit(monkeypatch):
    """Trees in batches (a record after each): the same trees as sklearn's single fit."""
    from sklearn.ensemble import RandomForestClassifier

    import napari_mtmsd.baselines as bl

    monkeypatch.setattr(bl, "TREES_PER_BATCH", 7)
    x, y = _spectra()
    x_test, _ = _spectra(seed=1)
    records = []
    model = run(SpectralRandomForest(n_estimators=30, seed=3).iter_fit(x, y), records.append)
    assert [r["step"] for r in records] == [7, 14, 21, 28, 30]
    assert {r["total"] for r in records} == {30}
    one = RandomForestClassifier(30, random_state=3).fit(x, y)
    np.testing.assert_array_equal(model.predict_proba(x_test), one.predict_proba(x_test))


def test_fits_that_cannot_be_cut_yield_records_while_they_run(monkeypatch):
    """The SVM's grid search runs in a thread: records every quarter second meanwhile, the
    same model as a plain fit, and its errors reach the caller."""
    import time

    x, y = _spectra()
    plain = SpectralSVM(n_components=10, seed=0)._fit(x, y)
    slow = SpectralSVM(n_components=10, seed=0)
    fit = slow._fit
    monkeypatch.setattr(slow, "_fit", lambda *a: (time.sleep(1.0), fit(*a))[1])
    stamps = []
    for _ in slow.iter_fit(x, y):
        stamps.append(time.perf_counter())
    assert len(stamps) >= 3 and max(np.diff(stamps)) < 0.5
    np.testing.assert_array_equal(slow.predict(x), plain.predict(x))
    with pytest.raises(InputError, match="expected"):
        run(SpectralSVM().iter_fit(x[:, :, None], y))
