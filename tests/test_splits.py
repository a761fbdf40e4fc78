import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_mtmsd.errors import InputError
from napari_mtmsd.splits import make_split, parse_split, split_counts

DATA = Path(__file__).parents[1].parent / "shared" / "data"
PAVIA = DATA / "pavia_university"


def _gt(seed=0, h=40, w=50):
    """Blobby ground truth: 5 classes in horizontal bands plus a 2-pixel class and unlabelled holes."""
    rng = np.random.default_rng(seed)
    gt = np.repeat(np.arange(1, 6), h // 5)[:, None] * np.ones((1, w), dtype=np.int64)
    gt[rng.random((h, w)) < 0.2] = 0
    gt[0, 0], gt[h - 1, w - 1] = 6, 6
    return gt


def _check_basic(gt, train, test):
    assert train.shape == test.shape == gt.shape
    assert not (train & test).any()
    assert not (train & (gt == 0)).any() and not (test & (gt == 0)).any()


def test_random_fraction_is_stratified_and_deterministic():
    gt = _gt()
    train, test = make_split(gt, "random:0.1", seed=827)
    _check_basic(gt, train, test)
    assert np.array_equal(train | test, gt > 0)
    for c in range(1, 7):
        n = int((gt == c).sum())
        expected = max(1, min(int(np.round(0.1 * n)), n - 1))
        assert int((train & (gt == c)).sum()) == expected
        assert (test & (gt == c)).any()
    as_float = make_split(gt.astype(np.float64), "random:0.1", seed=827)[0]
    assert np.array_equal(as_float, train)  # .mat label maps often come as doubles
    again, _ = make_split(gt, "random:0.1", seed=827)
    other, _ = make_split(gt, "random:0.1", seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_random_on_indian_pines_counts():
    # per-class counts of the Indian Pines ground truth (data README): the paper's 10 % split
    counts = [46, 1428, 830, 237, 483, 730, 28, 478, 20, 972, 2455, 593, 205, 1265, 386, 93]
    gt = np.concatenate([np.full(n, c + 1) for c, n in enumerate(counts)]).reshape(1, -1)
    train, test = make_split(gt, "random:0.1")
    assert train.sum() == 1025 and test.sum() == sum(counts) - 1025


def test_per_class_caps_to_leave_a_test_pixel():
    gt = _gt()
    train, test = make_split(gt, "per-class:5", seed=3)
    _check_basic(gt, train, test)
    rows = {r["class"]: r for r in split_counts(gt, train, test)}
    assert all(rows[c]["train"] == 5 for c in range(1, 6))
    assert rows[6]["train"] == 1 and rows[6]["test"] == 1  # 2 pixels: one each side


@pytest.mark.parametrize("k", [2, 3, 4])
def test_blocks_are_spatially_disjoint(k):
    gt = _gt(h=60, w=60)
    train, test = make_split(gt, f"blocks:{k}", seed=827)
    _check_basic(gt, train, test)
    rows = np.array_split(np.arange(60), k)
    cols = np.array_split(np.arange(60), k)
    for r in rows:
        for c in cols:
            block = np.ix_(r, c)
            assert not (train[block].any() and test[block].any())  # whole blocks only
    assert train.any() and test.any()


def test_blocks_put_classes_on_both_sides_where_possible():
    # 6 classes as vertical stripes: every class spans all block rows, so all can be split
    gt = np.repeat(np.arange(1, 7), 10)[None, :] * np.ones((60, 1), dtype=np.int64)
    train, test = make_split(gt, "blocks:3", seed=5)
    for row in split_counts(gt, train, test):
        assert row["train"] > 0 and row["test"] > 0, row
    assert make_split(gt, "blocks:3", seed=5)[0].tolist() == train.tolist()


@pytest.mark.parametrize(
    "spec",
    [
        "random",
        "random:0",
        "random:1.5",
        "random:x",
        "per-class:0",
        "blocks:1",
        "nope:3",
        "mask:a.mat",
        "per-class:abc",
    ],
)
def test_bad_specs(spec):
    with pytest.raises(InputError, match="split"):
        parse_split(spec)


def test_bad_ground_truth():
    with pytest.raises(InputError, match="no labelled pixel"):
        make_split(np.zeros((4, 4), dtype=int), "random:0.5")
    with pytest.raises(InputError, match="expected \\(H, W\\)"):
        make_split(np.zeros((4,), dtype=int), "random:0.5")
    with pytest.raises(InputError, match="cannot be cut"):
        make_split(np.ones((3, 3), dtype=int), "blocks:4")


def test_mask_files(tmp_path):
    gt = _gt()
    train_ref, test_ref = make_split(gt, "random:0.3", seed=2)
    tr, ts = tmp_path / "tr.npy", tmp_path / "ts.npy"
    np.save(tr, np.where(train_ref, gt, 0))
    test_labels = np.where(test_ref, gt, 0)
    test_labels[gt == 0] = 1  # pixels outside the ground truth are dropped with a warning
    np.save(ts, test_labels)
    with pytest.warns(UserWarning, match="unlabelled in the ground truth"):
        train, test = make_split(gt, f"mask:{tr},{ts}")
    assert np.array_equal(train, train_ref) and np.array_equal(test, test_ref)
    np.save(ts, np.where(train_ref, gt, 0))
    with pytest.raises(InputError, match="share"):
        make_split(gt, f"mask:{tr},{ts}")
    with pytest.raises(InputError, match="not found"):
        make_split(gt, f"mask:{tmp_path / 'missing.npy'},{ts}")
    np.save(ts, np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(InputError, match="shape"):
        make_split(gt, f"mask:{tr},{ts}")


@pytest.mark.skipif(not PAVIA.is_dir(), reason=f"shared test data not found at {PAVIA}")
def test_pavia_fixed_split():
    from scipy.io import loadmat

    gt = loadmat(PAVIA / "PaviaU_gt.mat")["paviaU_gt"].astype(np.int64)
    spec = f"mask:{PAVIA / 'TRpavia_fixed.mat'},{PAVIA / 'TSpavia_fixed.mat'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test = make_split(gt, spec)
    _check_basic(gt, train, test)
    # the training file labels 1147 pixels that PaviaU_gt leaves unlabelled: dropped, warned
    assert any("1147 pixels" in str(w.message) for w in caught)
    assert train.sum() == 3921 - 1147 and test.sum() == 40002
    rows = split_counts(gt, train, test)
    assert len(rows) == 9 and all(r["train"] > 0 and r["test"] > 0 for r in rows)
