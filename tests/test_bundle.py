"""The saved classifier: round trip, and files that are missing, corrupt or of another format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mtmsd.bundle import ClassifierBundle
from napari_mtmsd.errors import ModelFileError
from napari_mtmsd.features import FeatureSpec
from napari_mtmsd.pipeline import predict, train

SPEC = FeatureSpec(timesteps=(100, 400, 700), stages=(0, 1, 2), bf16=False)
FAST = dict(n_models=2, epochs=15, k=16)


@pytest.fixture(scope="module")
def bundle(tiny_model, small_scene, tmp_path_factory):
    cube, gt = small_scene
    labels = np.where(np.random.default_rng(0).random(gt.data.shape) < 0.1, gt.data, 0)
    cache = tmp_path_factory.mktemp("cache")
    return train(
        tiny_model, cube, labels, SPEC, class_names=gt.class_names, colors=gt.colors,
        device="cpu", cache_dir=cache, seed=0, **FAST,
    ), cache


def test_bundle_round_trip(bundle, small_scene, tmp_path):
    (b, cache), (cube, _) = bundle, small_scene
    b.save(tmp_path / "clf")
    loaded = ClassifierBundle.load(tmp_path / "clf")
    assert loaded.spec == b.spec and loaded.class_names == b.class_names
    np.testing.assert_array_equal(loaded.colors, b.colors)
    a = predict(b, cube, device="cpu", cache_dir=cache)
    c = predict(loaded, cube, device="cpu", cache_dir=cache)
    np.testing.assert_array_equal(a[0], c[0])
    np.testing.assert_allclose(a[1], c[1], rtol=1e-6)


def test_bundle_errors(bundle, tmp_path):
    b, _ = bundle
    with pytest.raises(ModelFileError, match=r"no bundle\.json"):
        ClassifierBundle.load(tmp_path)
    b.save(tmp_path / "clf")
    info = json.loads((tmp_path / "clf" / "bundle.json").read_text())
    (tmp_path / "clf" / "bundle.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ModelFileError, match="format 99"):
        ClassifierBundle.load(tmp_path / "clf")
    (tmp_path / "clf" / "bundle.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        ClassifierBundle.load(tmp_path / "clf")
