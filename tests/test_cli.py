"""The napari-mtmsd command line, run in-process through ``main``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mtmsd.cli import main
from napari_mtmsd.io import read_labels, write_labels

SYN = "sample:synthetic?size=32&bands=20&classes=3&seed=2"
FEAT = ["--timesteps", "100,500", "--stages", "0,1,2"]


def test_info_sample(capsys):
    assert main(["info", SYN, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [32, 32, 20] and info["bands"] == 20


def test_pretrain_train_predict_extract(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["pretrain", SYN, "-o", str(model), "--preset", "tiny", "--steps", "6",
                 "--device", "cpu"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "samples/s" in last and "final loss" in last
    assert (model / "config.json").is_file()

    from napari_mtmsd.io import load_input

    _, gt = load_input(SYN)
    labels = np.where(np.random.default_rng(0).random(gt.data.shape) < 0.2, gt.data, 0)
    lab = write_labels(tmp_path / "train.tif", labels)
    clf = tmp_path / "clf"
    cache = str(tmp_path / "cache")
    assert main(["train", SYN, "--labels", str(lab), "--model", str(model), "-o", str(clf),
                 "--n-models", "1", "--epochs", "3", "--cache-dir", cache, *FEAT]) == 0
    out = tmp_path / "maps"
    assert main(["predict", SYN, "--classifier", str(clf), "-o", str(out), "--format", "npy",
                 "--cache-dir", cache]) == 0
    maps = list(out.glob("*_classes.npy"))
    assert len(maps) == 1 and read_labels(maps[0]).data.shape == (32, 32)

    # update: the classifier continues on more labels of the same classes, as the panel's Update
    more = np.where(labels > 0, labels, np.where(np.random.default_rng(1).random(gt.data.shape)
                                                 < 0.1, gt.data, 0))
    lab2 = write_labels(tmp_path / "more.tif", more)
    assert main(["update", SYN, "--classifier", str(clf), "--labels", str(lab2), "-o",
                 str(tmp_path / "clf2"), "--update-epochs", "2", "--cache-dir", cache,
                 "--map", str(tmp_path / "map.npy")]) == 0
    assert "continued on" in capsys.readouterr().out
    from napari_mtmsd.bundle import ClassifierBundle

    updated = ClassifierBundle.load(tmp_path / "clf2")
    assert updated.classifier.history_["warm_start"]
    assert max(updated.classifier.history_["epochs_run"]) <= 2
    assert updated.meta["n_train"] == int((more > 0).sum())
    assert read_labels(tmp_path / "map.npy").data.shape == (32, 32)

    feats = tmp_path / "feats"
    assert main(["extract", SYN, "--model", str(model), "-o", str(feats), "--pixels",
                 f"labelled:{lab}", *FEAT]) == 0
    side = json.loads((feats / "features.json").read_text())
    assert side["shape"] == [int((labels > 0).sum()), 2, side["shape"][2]]
    assert np.load(feats / "centre.npy").shape == tuple(side["shape"])


def test_help_shows_true_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "60 % of the feature channels" in out and "ensemble size (default 5)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "/nonexistent/cube.hdr"], "cube.hdr"),
        (["info", "sample:nothing"], "unknown sample"),
        (["pretrain", SYN, "-o", "/nonexistent/model", "--steps", "0"], "steps"),
        (["evaluate", SYN, "--timesteps", "a,b"], "--timesteps"),
        (["update", SYN, "--classifier", "/nonexistent", "--labels", "/nonexistent.tif", "-o",
          "x"], "nonexistent"),
        (["train", SYN, "--labels", "/nonexistent.tif", "--model", "/nonexistent", "-o", "x"],
         "nonexistent"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and message in err[0]
