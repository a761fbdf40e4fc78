"""The whole method on a small synthetic scene with ground truth, and its report."""

from __future__ import annotations

import json

import numpy as np

from napari_mtmsd.evaluation import evaluate, format_report, save_report
from napari_mtmsd.features import FeatureSpec

SPEC = FeatureSpec(timesteps=(100, 400, 700), stages=(0, 1, 2), bf16=False)
FAST = dict(n_models=2, epochs=15, k=16)


def test_evaluate_end_to_end(small_scene, tmp_path):
    """Pretraining included, on test pixels only, with the baselines beside it."""
    cube, gt = small_scene
    report = evaluate(
        cube, gt.data, split="random:0.1", seed=827, preset="tiny", pretrain_steps=20,
        device="cpu", spec=SPEC, cache_dir=False, baselines=("linear", "svm"), **FAST,
    )
    n_lab = int((gt.data > 0).sum())
    assert report["n_train"] + report["n_test"] == n_lab
    assert report["n_test"] == int(np.asarray(report["confusion_matrix"]).sum())
    assert 0 <= report["oa"] <= 100 and report["oa"] > 40
    assert set(report["timings_s"]) == {"pretrain", "features", "train", "predict", "total"}
    assert set(report["baselines"]) == {"linear", "svm"}
    assert not (report["train_mask"] & report["test_mask"]).any()

    text = format_report(report)
    assert "linear probe" in text and f"test pixels {report['n_test']}" in text
    written = save_report(report, tmp_path / "r.json", tmp_path / "png", gt.class_names, gt.colors)
    assert [p.name for p in written] == ["r.json", "class_map.png", "confusion_matrix.png"]
    saved = json.loads(written[0].read_text())
    assert saved["oa"] == report["oa"] and "class_map" not in saved and "bundle" not in saved
