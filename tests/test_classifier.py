import json

import numpy as np
import pytest
import torch

from napari_mtmsd.classifier import MTMSDClassifier
from napari_mtmsd.classifier_file import CONFIG_FILE, WEIGHTS_FILE
from napari_mtmsd.errors import InputError, ModelFileError


def _problem(n=150, t=4, d=12, seed=0, dtype=np.float16):
    """Three classes (labels 2, 5, 7), each marked on its own channels, strongest at one timestep."""
    rng = np.random.default_rng(seed)
    y = np.array([2, 5, 7])[rng.integers(0, 3, n)]
    centre = rng.normal(size=(n, t, d))
    glob = rng.normal(size=(n, t, d))
    for j, c in enumerate((2, 5, 7)):
        centre[y == c, :, j] += 2.0
        centre[y == c, 1, j] += 2.0
        glob[y == c, :, j + 3] += 2.0
    return centre.astype(dtype), glob.astype(dtype), y


def _small(**kw):
    args = {"k": 8, "n_models": 3, "epochs": 25, "batch_size": 16, "seed": 3}
    return MTMSDClassifier(**{**args, **kw})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: one thread avoids OpenMP barrier stalls on a busy 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted():
    centre, glob, y = _problem()
    records = []
    clf = _small().fit(centre, glob, y, callback=records.append)
    return clf, records


def test_learns_separable_problem(fitted):
    clf, records = fitted
    centre, glob, y = _problem(seed=1)  # fresh pixels from the same distribution
    assert clf.classes_.tolist() == [2, 5, 7]
    assert (clf.predict(centre, glob) == y).mean() > 0.9
    proba = clf.predict_proba(centre, glob)
    assert proba.shape == (len(y), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert records[0]["stage"] == "train" and records[-1]["step"] <= records[-1]["total"]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]


def test_timestep_attention(fitted):
    clf, _ = fitted
    centre, glob, _ = _problem(n=20, seed=2)
    attention = clf.timestep_attention(centre, glob)
    assert attention.shape == (20, 4)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-5)


def test_deterministic_for_a_seed():
    centre, glob, y = _problem(n=60)
    a = _small(epochs=3).fit(centre, glob, y)
    b = _small(epochs=3).fit(centre, glob, y)
    c = _small(epochs=3, seed=4).fit(centre, glob, y)
    np.testing.assert_array_equal(a.predict_proba(centre, glob), b.predict_proba(centre, glob))
    assert not np.array_equal(a.predict_proba(centre, glob), c.predict_proba(centre, glob))


def test_early_stop_freezes_members():
    centre, glob, y = _problem(n=60)
    clf = _small(epochs=40, patience=1, tol=0.5).fit(centre, glob, y)
    assert max(clf.history_["epochs_run"]) < 40


def test_majority_vote_breaks_ties_by_mean_probability(fitted, monkeypatch):
    clf, _ = fitted
    # 3 members: votes (class 0, class 1, class 2) -> tie; mean probability favours class 2
    member = np.array([[[0.5, 0.2, 0.3]], [[0.1, 0.6, 0.3]], [[0.1, 0.1, 0.8]]], dtype=np.float32)
    monkeypatch.setattr(clf, "_member_outputs", lambda *a, **k: (member, None))
    assert clf.predict(None, None).tolist() == [7]
    member2 = np.array([[[0.5, 0.2, 0.3]], [[0.4, 0.3, 0.3]], [[0.0, 0.0, 1.0]]], dtype=np.float32)
    monkeypatch.setattr(clf, "_member_outputs", lambda *a, **k: (member2, None))
    assert clf.predict(None, None).tolist() == [2]  # two votes beat a higher mean probability


def test_save_load_round_trip(fitted, tmp_path, kernel_writes):
    clf, _ = fitted
    centre, glob, _ = _problem(n=30, seed=5)
    out = clf.save(tmp_path / "clf")
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["classes"] == [2, 5, 7]
    assert len(config["purification"]["centre"]) == 8
    assert config["hyperparameters"]["seed"] == 3 and "torch" in config["versions"]
    loaded = MTMSDClassifier.load(out)
    np.testing.assert_array_equal(
        loaded.predict_proba(centre, glob), clf.predict_proba(centre, glob)
    )
    np.testing.assert_array_equal(loaded.predict(centre, glob), clf.predict(centre, glob))
    assert not list(tmp_path.glob(".tmp-*"))
    with kernel_writes() as writes:  # loading reads, it does not initialise first
        MTMSDClassifier.load(out)
    assert writes == []


def test_bad_files_raise_model_file_error(fitted, tmp_path):
    clf, _ = fitted
    with pytest.raises(ModelFileError, match="not found"):
        MTMSDClassifier.load(tmp_path / "missing")
    out = clf.save(tmp_path / "clf")
    weights = (out / WEIGHTS_FILE).read_bytes()
    (out / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ModelFileError, match="corrupt weights"):
        MTMSDClassifier.load(out)
    out = clf.save(tmp_path / "clf")
    (out / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt JSON"):
        MTMSDClassifier.load(out)
    out = clf.save(tmp_path / "clf")
    config = json.loads((out / CONFIG_FILE).read_text())
    config["k"] = 9  # weights no longer fit
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="inconsistent"):
        MTMSDClassifier.load(out)
    config["format_version"] = 99
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="format_version"):
        MTMSDClassifier.load(out)


def test_input_errors(fitted):
    clf, _ = fitted
    centre, glob, y = _problem(n=20)
    with pytest.raises(InputError, match="at least 2"):
        _small().fit(centre, glob, np.full(20, 3))
    with pytest.raises(InputError, match="0 means unlabelled"):
        _small().fit(centre, glob, np.where(y == 2, 0, y))
    with pytest.raises(InputError, match="trained on T=4"):
        clf.predict(centre[:, :3], glob[:, :3])
    with pytest.raises(InputError, match="not trained"):
        _small().predict(centre, glob)


def test_k_larger_than_channels_is_clipped():
    centre, glob, y = _problem(n=40, d=6)
    with pytest.warns(UserWarning, match="clipped to 6"):
        clf = _small(k=50, epochs=2).fit(centre, glob, y)
    assert clf.k_ == 6 and sorted(clf.purification_["centre"].tolist()) == list(range(6))


def test_warm_start_continues_from_a_classifier(fitted):
    clf, _ = fitted
    before = clf.predict_proba(*_problem(n=30, seed=2)[:2])
    centre, glob, y = _problem(n=180, seed=5)
    # more pixels of the same classes: the continuation fits them
    warm = _small(epochs=3).fit(centre, glob, y, warm_start=clf)
    assert warm.history_["warm_start"] and max(warm.history_["epochs_run"]) <= 3
    for key in ("centre", "glob"):  # purification and statistics are the warm start's
        np.testing.assert_array_equal(warm.purification_[key], clf.purification_[key])
    assert warm.k_ == clf.k_ and warm.classes_.tolist() == clf.classes_.tolist()
    assert (warm.predict(centre, glob) == y).mean() > 0.9
    # the warm start itself is left untouched
    np.testing.assert_array_equal(clf.predict_proba(*_problem(n=30, seed=2)[:2]), before)
    # zero-progress continuation = the same model: weights start exactly from the warm start's
    same = _small(epochs=1, lr=1e-12, min_lr=1e-12).fit(centre, glob, y, warm_start=clf)
    before_state, after_state = clf.model_.state_dict(), same.model_.state_dict()
    for name, a in before_state.items():
        b = after_state[name]
        if "running" not in name:  # batch-norm statistics move with every batch
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_warm_start_mismatch_is_explained(fitted):
    clf, _ = fitted
    centre, glob, y = _problem(n=60, seed=5)
    assert clf.warm_start_mismatch(y, 3, centre, glob) is None
    assert clf.warm_start_mismatch(y) is None
    y2 = y.copy()
    y2[y2 == 7] = 5
    assert "classes" in clf.warm_start_mismatch(y2, 3, centre, glob)
    assert "features" in clf.warm_start_mismatch(y, 3, centre[:, :3], glob[:, :3])
    assert "ensemble" in clf.warm_start_mismatch(y, 5, centre, glob)
    assert "not trained" in _small().warm_start_mismatch(y, 3, centre, glob)
    with pytest.raises(InputError, match=r"cannot continue.*classes"):
        _small(epochs=1).fit(centre, glob, y2, warm_start=clf)


def test_purified_features_predict_the_same(fitted):
    clf, _ = fitted
    centre, glob, y = _problem(n=70, seed=4)
    x, g = clf.purify(centre, glob)
    assert x.shape == g.shape == (70, 4, clf.k_) and x.dtype == g.dtype == clf.purified_dtype()
    labels, confidence = clf.predict_purified(x, g)
    expected = clf.predict_with_confidence(centre, glob)
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(confidence, expected[1])
    # valid for a continuation (same purification), not for a classifier fitted on other data
    assert _small(epochs=1).fit(centre, glob, y, warm_start=clf).same_purification(clf)
    assert not _small(epochs=1).fit(*_problem(n=90, seed=6)).same_purification(clf)
    with pytest.raises(InputError, match="from purify"):
        clf.predict_purified(x[:, :2], g[:, :2])


def test_set_up_of_paper_sized_features_yields_within_a_second(monkeypatch):
    """Purification and the ensemble's initialisation cost seconds with the paper's features
    (1280 channels, 100 M weights): slowed here to 0.6 and 1.2 s, they run while the job yields
    records, and the classifier is the one a plain fit makes."""
    import time

    from napari_mtmsd import _fit_loop

    centre, glob, y = _problem()
    plain = _small(epochs=2).fit(centre, glob, y)
    select, build = _fit_loop.select_channels, _fit_loop.SelectiveFusion

    def slow(seconds, fn):
        return lambda *a, **k: (time.sleep(seconds), fn(*a, **k))[1]

    monkeypatch.setattr(_fit_loop, "select_channels", slow(0.6, select))
    monkeypatch.setattr(_fit_loop, "SelectiveFusion", slow(1.2, build))
    clf, stamps = _small(epochs=2), [time.perf_counter()]
    for record in clf.iter_fit(centre, glob, y):
        if len(stamps) == 1 or "loss" not in record:  # the set-up, up to the first batch
            stamps.append(time.perf_counter())
    gaps = np.diff(stamps)
    assert sum(gaps) > 2.4 and max(gaps) < 0.5, gaps
    for a, b in zip(plain.model_.state_dict().values(), clf.model_.state_dict().values(), strict=True):
        assert torch.equal(a, b)
