import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, recall_score

from napari_mtmsd.errors import InputError
from napari_mtmsd.metrics import format_table, plot_class_map, plot_confusion, scores


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(1, 6, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(1, 6, 300))
    s = scores(y_true, y_pred)
    assert s["oa"] == pytest.approx(100 * accuracy_score(y_true, y_pred))
    assert s["kappa"] == pytest.approx(100 * cohen_kappa_score(y_true, y_pred))
    recall = recall_score(y_true, y_pred, average=None)
    np.testing.assert_allclose(s["per_class_accuracy"], 100 * recall)
    assert s["aa"] == pytest.approx(100 * recall.mean())
    assert s["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    assert s["n"] == 300 and s["labels"] == [1, 2, 3, 4, 5]


def test_absent_class_is_none_and_left_out_of_aa():
    s = scores([1, 1, 2, 2], [1, 2, 2, 2], n_classes=3)
    assert s["labels"] == [1, 2, 3]
    assert s["per_class_accuracy"] == [50.0, 100.0, None]
    assert s["aa"] == pytest.approx(75.0)
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_bad_inputs():
    with pytest.raises(InputError, match="same number"):
        scores([1, 2], [1])
    with pytest.raises(InputError, match="at least one"):
        scores([], [])


def test_format_table():
    text = format_table([{"method": "MTMSD", "oa": 98.123}, {"method": "SVM", "oa": 77.6}])
    lines = text.splitlines()
    assert lines[0].split() == ["method", "oa"]
    assert "98.12" in lines[2] and "77.60" in lines[3]
    assert format_table([]) == ""


def test_pngs_are_written(tmp_path):
    class_map = np.zeros((20, 30), dtype=np.int32)
    class_map[5:15, 5:15] = 1
    class_map[:, 20:] = 3
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    out = plot_class_map(tmp_path / "map.png", class_map, ["a", "b", "c"], colors, title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    out = plot_class_map(tmp_path / "map_default.png", class_map)
    assert out.stat().st_size > 1000
    out = plot_confusion(tmp_path / "cm.png", [[5, 1], [0, 7]], ["a", "b"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "map.png", "map_default.png"]
    with pytest.raises(InputError, match="colours"):
        plot_class_map(tmp_path / "x.png", class_map, colors=colors[:2])
    with pytest.raises(InputError, match="square"):
        plot_confusion(tmp_path / "x.png", [[1, 2, 3]])
