import itertools

import numpy as np
import pytest

from napari_mtmsd.errors import InputError
from napari_mtmsd.purification import purification_scores, select_channels


def _slow_scores(features, labels, lam=0.8, w=0.5, eps=1e-12):
    """Loop-by-loop transcription of method.md section 4."""
    classes = sorted(set(labels.tolist()))
    _, t_count, d_count = features.shape
    m = np.zeros((len(classes), t_count, d_count))
    for ci, c in enumerate(classes):
        rows = [i for i in range(len(labels)) if labels[i] == c]
        for t in range(t_count):
            for d in range(d_count):
                m[ci, t, d] = sum(float(features[i, t, d]) for i in rows) / len(rows)
    out = np.zeros(d_count)
    k = len(classes)
    for d in range(d_count):
        s_cls = 0.0
        for t in range(t_count):
            col = m[:, t, d]
            z = [(v - col.min()) / (col.max() - col.min() + eps) for v in col]
            pairs = [z[a] * z[b] for a, b in itertools.permutations(range(k), 2)]
            mean = sum(z) / k
            var = sum((v - mean) ** 2 for v in z) / k
            s_cls += -lam * sum(pairs) / len(pairs) + (1 - lam) * var
        s_t = 0.0
        for c in range(k):
            row = m[c, :, d]
            y = [(v - row.min()) / (row.max() - row.min() + eps) for v in row]
            pairs = [y[a] * y[b] for a, b in itertools.permutations(range(t_count), 2)]
            mean = sum(y) / t_count
            var = sum((v - mean) ** 2 for v in y) / t_count
            s_t += -lam * sum(pairs) / len(pairs) + (1 - lam) * var
        out[d] = s_cls + w * s_t
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_matches_loop_transcription(dtype):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 5, 7)).astype(dtype)
    labels = rng.integers(1, 5, size=40)
    fast = purification_scores(feats, labels)
    slow = _slow_scores(feats, labels)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)


def test_other_lambda_and_weight():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 4, 6))
    labels = rng.integers(1, 4, size=30)
    fast = purification_scores(feats, labels, lam=0.3, timestep_weight=2.0)
    np.testing.assert_allclose(fast, _slow_scores(feats, labels, 0.3, 2.0), rtol=1e-9)


def test_chunked_accumulation_matches(monkeypatch):
    import napari_mtmsd.purification as pur

    rng = np.random.default_rng(2)
    feats = rng.normal(size=(50, 3, 4))
    labels = rng.integers(1, 4, size=50)
    whole = purification_scores(feats, labels)
    monkeypatch.setattr(pur, "_CHUNK_BYTES", 8 * 3 * 4 * 7)  # 7 rows per chunk
    np.testing.assert_allclose(purification_scores(feats, labels), whole, rtol=1e-12)


def test_constant_channels_are_finite():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(20, 4, 5))
    feats[:, :, 2] = 3.0  # constant everywhere
    feats[:, 1, 4] = 1.0  # constant at one timestep
    labels = np.repeat([1, 2], 10)
    score = purification_scores(feats, labels)
    assert np.all(np.isfinite(score))
    assert score[2] == 0.0


def test_selects_informative_channels_best_first():
    # The score rewards channels whose class means are sparse (one class stands out, so pair
    # products are small) and that peak at few timesteps: plant two such channels.
    rng = np.random.default_rng(4)
    labels = np.repeat([1, 2, 3], 30)
    feats = rng.normal(scale=0.1, size=(90, 6, 10))
    feats[labels == 2, :, 7] += 5.0  # class 2 stands out at every timestep ...
    feats[:, 3, 7] += 10.0  # ... and every class peaks at timestep 3
    feats[labels == 3, :, 4] += 5.0
    feats[:, 1, 4] += 10.0
    score = purification_scores(feats, labels)
    idx = select_channels(feats, labels, 2)
    assert set(idx.tolist()) == {4, 7}
    assert idx.dtype == np.int64
    everything = select_channels(feats, labels, 50)
    assert sorted(everything.tolist()) == list(range(10))
    assert np.all(np.diff(score[everything]) <= 0)


def test_single_class_is_rejected():
    feats = np.zeros((5, 3, 4))
    with pytest.raises(InputError, match="at least 2 classes"):
        purification_scores(feats, np.ones(5, dtype=int))


def test_bad_inputs():
    with pytest.raises(InputError, match="expected \\(N, T, D\\)"):
        purification_scores(np.zeros((5, 4)), np.ones(5))
    with pytest.raises(InputError, match="one label per row"):
        purification_scores(np.zeros((5, 3, 4)), np.ones(4))
    with pytest.raises(InputError, match="NaN"):
        bad = np.zeros((4, 2, 3))
        bad[0, 0, 0] = np.nan
        purification_scores(bad, np.array([1, 1, 2, 2]))
    with pytest.raises(InputError, match="positive integer"):
        select_channels(np.zeros((4, 2, 3)), np.array([1, 1, 2, 2]), 0)
