"""The jobs: train, predict (with the purified scene kept for Updates), continue a training."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd.errors import InputError
from napari_mtmsd.features import FeatureSpec
from napari_mtmsd.pipeline import predict, train

SPEC = FeatureSpec(timesteps=(100, 400, 700), stages=(0, 1, 2), bf16=False)
FAST = dict(n_models=2, epochs=15, k=16, method="paper")  # the fusion heads' behaviour


@pytest.fixture(scope="module")
def bundle(tiny_model, small_scene, tmp_path_factory):
    cube, gt = small_scene
    labels = np.zeros_like(gt.data)
    rng = np.random.default_rng(0)
    for c in np.unique(gt.data[gt.data > 0]):
        rr, cc = np.nonzero(gt.data == c)
        pick = rng.choice(len(rr), size=min(15, len(rr)), replace=False)
        labels[rr[pick], cc[pick]] = c
    cache = tmp_path_factory.mktemp("cache")
    return train(
        tiny_model, cube, labels, SPEC, class_names=gt.class_names, colors=gt.colors,
        device="cpu", cache_dir=cache, seed=0, **FAST,
    ), cache


def test_predict_whole_scene(bundle, small_scene):
    (b, cache), (cube, gt) = bundle, small_scene
    class_map, confidence = predict(b, cube, device="cpu", cache_dir=cache)
    assert class_map.shape == confidence.shape == gt.data.shape
    assert set(np.unique(class_map)) <= set(np.unique(gt.data[gt.data > 0]))
    assert ((confidence > 0) & (confidence <= 1)).all()
    # far better than chance on a scene with 4 well separated classes
    assert (class_map == gt.data)[gt.data > 0].mean() > 0.6


def test_predict_rejects_cube_with_other_bands(bundle, small_scene):
    import dataclasses

    (b, _), (cube, _) = bundle, small_scene
    other = dataclasses.replace(cube, data=np.asarray(cube.data)[:, :, :-3], wavelengths=None)
    with pytest.raises(InputError, match="bands"):
        predict(b, other, device="cpu")


def test_train_needs_two_classes_and_matching_shape(tiny_model, small_cube):
    labels = np.zeros(small_cube.data.shape[:2], np.int32)
    labels[0, 0] = 1
    with pytest.raises(InputError, match="at least 2 classes"):
        train(tiny_model, small_cube, labels, SPEC)
    with pytest.raises(InputError, match="training labels are"):
        train(tiny_model, small_cube, labels[:-1], SPEC)


def test_train_can_continue_from_a_bundle(bundle, small_scene, tiny_model):
    from napari_mtmsd.pipeline import warm_start_mismatch

    (b, cache), (cube, gt) = bundle, small_scene
    labels = np.where(np.random.default_rng(1).random(gt.data.shape) < 0.2, gt.data, 0)
    assert warm_start_mismatch(b, tiny_model, SPEC, labels) is None
    cont = train(tiny_model, cube, labels, SPEC, device="cpu", cache_dir=cache, warm_start=b,
                 epochs=2)  # fmt: skip
    assert cont.classifier.history_["warm_start"] and cont.classifier.n_models == FAST["n_models"]
    assert cont.meta["n_train"] == int((labels > 0).sum())
    other = FeatureSpec(timesteps=(100, 400), stages=(0, 1, 2), bf16=False)
    assert "other features" in warm_start_mismatch(b, tiny_model, other, labels)
    fewer = np.where(labels == labels.max(), 0, labels)
    assert "classes" in warm_start_mismatch(b, tiny_model, SPEC, fewer)
    with pytest.raises(InputError, match="cannot continue"):
        train(tiny_model, cube, fewer, SPEC, device="cpu", cache_dir=cache, warm_start=b)


def test_predict_reuses_purified_features(bundle, small_scene, tiny_model, monkeypatch):
    import napari_mtmsd.pipeline as pipeline
    from napari_mtmsd._progress import run

    (b, cache), (cube, gt) = bundle, small_scene
    store = run(pipeline.iter_features(tiny_model, cube, SPEC, "cpu", cache))
    reuse: dict = {}
    first = predict(b, cube, device="cpu", store=store, reuse=reuse)
    scene = reuse["purified"]
    plain = predict(b, cube, device="cpu", store=store)
    np.testing.assert_array_equal(first[0], plain[0])
    np.testing.assert_array_equal(first[1], plain[1])

    # an Update continues the training with the same purification: the store is not read again
    labels = np.where(np.random.default_rng(1).random(gt.data.shape) < 0.2, gt.data, 0)
    cont = train(tiny_model, cube, labels, SPEC, device="cpu", store=store, warm_start=b,
                 epochs=2, method="paper")  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(type(store), "chunks", lambda *a: pytest.fail("the store was read again"))
        again = predict(cont, cube, device="cpu", store=store, reuse=reuse)
    assert reuse["purified"] is scene
    expected = predict(cont, cube, device="cpu", store=store)
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])

    # a new training purifies afresh: what was kept is replaced
    fresh = train(tiny_model, cube, labels, SPEC, device="cpu", store=store, seed=1, **FAST)
    assert not fresh.classifier.same_purification(b.classifier)
    predict(fresh, cube, device="cpu", store=store, reuse=reuse)
    assert reuse["purified"] is not scene and reuse["purified"].fits(fresh.classifier, store)

    # a stopped prediction keeps nothing; nor does one over the memory budget
    monkeypatch.setattr(pipeline, "PREDICT_CHUNK", 100)
    stopped: dict = {}
    job = pipeline.iter_predict(b, cube, "cpu", store=store, reuse=stopped)
    next(job)
    job.close()
    assert stopped == {}
    monkeypatch.setattr(pipeline, "REUSE_MAX_MB", 0)
    big: dict = {}
    predict(b, cube, device="cpu", store=store, reuse=big)
    assert big == {}
