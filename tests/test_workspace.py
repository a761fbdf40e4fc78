"""The interactive loop without Qt: pretrain, label, Update (full, then warm start), score."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_mtmsd.config import ClassifierConfig
from napari_mtmsd.errors import InputError
from napari_mtmsd.features import FeatureSpec
from napari_mtmsd.workspace import Workspace
from qt_support import covered

SPEC = FeatureSpec(timesteps=(100, 400, 700), stages=(0, 1, 2), bf16=False)


def _strokes(gt: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    labels = np.zeros_like(gt, dtype=np.int32)
    rng = np.random.default_rng(seed)
    for c in np.unique(gt[gt > 0]):
        rr, cc = np.nonzero(gt == c)
        pick = rng.choice(len(rr), size=min(per_class, len(rr)), replace=False)
        labels[rr[pick], cc[pick]] = c
    return labels


def test_whole_loop_headless(small_scene, tmp_path, capsys):
    cube, gt = small_scene
    ws = Workspace(
        cube, spec=SPEC, classifier=ClassifierConfig(method="paper", n_models=2, epochs=8, update_epochs=2),
        device="cpu", cache_dir=tmp_path,
    )  # fmt: skip
    seen: list[str] = []
    for name in ("model", "features", "classifier", "prediction"):
        getattr(ws.events, name).connect(lambda name=name: seen.append(name))

    ws.pretrain(preset="tiny", steps=6)
    assert ws.model is not None and "model" in seen
    assert "Pretrain: pretrain" in capsys.readouterr().err  # the tqdm bar

    first = _strokes(gt.data, 6, seed=0)
    ws.set_labels(first, gt.class_names, gt.colors)
    assert ws.class_names == list(gt.class_names)
    assert ws.update_plan(first).reason == "no classifier yet"
    job = ws.update_job()
    assert job.name == "Update (full training)" and job.note.endswith("no classifier yet")
    prediction = job.run(progress=False)
    assert ws.class_map is prediction.class_map and ws.class_map.shape == gt.data.shape
    assert ws.features is not None and {"classifier", "prediction"} <= set(seen)
    full = ws.bundle
    assert not full.classifier.history_["warm_start"]
    report = ws.scores(gt.data)
    assert report["n"] == int(ws.test_mask(gt.data).sum()) == int(
        ((gt.data > 0) & (first == 0)).sum()
    )

    assert repr(ws).startswith("Workspace(cube 'synthetic' (40, 32, 30), model #")
    assert "features cached" in repr(ws) and f"classifier on {int((first > 0).sum())} px" in repr(ws)

    # more labels of the same classes: the Update continues the classifier on cached features
    more = np.where(first > 0, first, _strokes(gt.data, 4, seed=1))
    ws.set_labels(more)
    job = ws.update_job()
    assert job.name == "Update" and ws.update_plan(more).warm_start is full
    job.run(progress=False)
    clf = ws.bundle.classifier
    assert clf.history_["warm_start"] and max(clf.history_["epochs_run"]) <= 2
    assert ws.bundle.meta["n_train"] == int((more > 0).sum())
    assert ws.scores(gt.data)["n"] == int(((gt.data > 0) & (more == 0)).sum())

    # a class erased: the classes changed, so the Update trains afresh and says why
    top = int(more.max())
    ws.set_labels(np.where(more == top, 0, more))
    job = ws.update_job()
    assert job.name == "Update (full training)" and "classes" in job.note
    job.run(progress=False)
    assert top not in ws.bundle.classifier.classes_

    # a saved classifier comes back with its model and spec; it predicts another cube
    ws.save_classifier(tmp_path / "clf")
    ws.save_model(tmp_path / "model")
    reloaded = Workspace(cube, device="cpu", cache_dir=tmp_path)
    assert reloaded.load_model(tmp_path / "model").fingerprint() == ws.model.fingerprint()
    other = Workspace(device="cpu", cache_dir=tmp_path)
    other.load_classifier(tmp_path / "clf")
    assert other.spec == SPEC and other.model.fingerprint() == ws.model.fingerprint()
    again = other.predict(cube, progress=False)
    np.testing.assert_array_equal(again.class_map, ws.class_map)


def test_feature_key_follows_model_cube_and_parsed_spec(small_scene, tiny_model, tmp_path):
    cube, _ = small_scene
    ws = Workspace(cube, model=tiny_model, spec=SPEC, device="cpu", cache_dir=tmp_path)
    ws.extract(progress=False)
    assert ws.features is not None
    ws.set_spec(FeatureSpec(timesteps=(100, 400, 700), stages=(0, 1, 2), bf16=False))
    assert ws.features is not None  # an equal spec (as "0,1,2" and "0, 1, 2" parse) keeps them
    ws.set_spec(FeatureSpec(timesteps=(100,), stages=(0, 1, 2), bf16=False))
    assert ws.features is None
    ws.set_spec(SPEC)
    assert ws.features is not None
    ws.set_cube(cube)
    assert ws.features is not None  # the same cube
    ws.set_cube(dataclasses.replace(cube))
    assert ws.features is None  # another cube: extract again (a cache hit)


def test_errors_name_what_is_missing(small_scene, tiny_model):
    cube, gt = small_scene
    ws = Workspace(cube)
    with pytest.raises(InputError, match="no diffusion model to save"):
        ws.save_model("unused")
    with pytest.raises(InputError, match="no diffusion model"):
        ws.extract_job()
    with pytest.raises(InputError, match="no training labels"):
        ws.update_job()  # without a model it would make the quick map, from labels
    ws.set_model(tiny_model)
    with pytest.raises(InputError, match="no training labels"):
        ws.update_job()
    with pytest.raises(InputError, match="rows x cols"):
        ws.set_labels(np.zeros((3, 3), np.int32))
    with pytest.raises(InputError, match="no classifier"):
        ws.predict_job(cube)
    assert ws.scores(gt.data) is None


def test_new_model_keeps_only_its_stages(small_scene, tiny_model):
    ws = Workspace(small_scene[0], spec=FeatureSpec(stages=(0, 5, 40)))
    ws.set_model(tiny_model)
    assert ws.spec.stages == (0, 5)


def test_first_map_before_any_model_then_the_mtmsd_map(small_scene, tiny_model, tmp_path):
    """Train before pretraining gives the quick map from the spectra; once a model is there,
    the same call trains the MTMSD heads (the few-label head, at a few labels per class)."""
    cube, gt = small_scene
    ws = Workspace(cube, spec=SPEC, device="cpu", cache_dir=tmp_path)
    labels = _strokes(gt.data, 4, seed=3)
    ws.set_labels(labels, gt.class_names, gt.colors)
    job = ws.train_job()
    assert job.name == "Quick map" and "no diffusion model" in job.note
    quick = job.run(progress=False)
    assert quick.method == "quick" and ws.prediction is quick and ws.bundle is None
    valid = np.asarray(cube.valid_mask())
    assert set(np.unique(quick.class_map[valid])) <= set(np.unique(labels[labels > 0]))
    assert ws.scores(gt.data)["oa"] > 60
    assert quick.suggestions.ndim == 2 and len(quick.suggestions) > 0
    assert all(labels[r, c] == 0 for r, c in quick.suggestions)
    ws.set_model(tiny_model)
    mtmsd = ws.train(progress=False)
    assert mtmsd.method == "few-label" and ws.bundle.method == "few-label"


def test_the_map_fills_in_place_and_a_stop_keeps_what_is_done(
    small_scene, tiny_model, tmp_path, monkeypatch
):
    """A prediction fills its map region by region (events ``partial`` then ``partial_region``),
    ends with the map a plain prediction gives, and a Stop leaves the finished regions filled,
    the rest zeros, and the last complete prediction in place. Records without regions: the
    map comes at the end, as before."""
    from napari_mtmsd import pipeline
    from napari_mtmsd._progress import forward

    monkeypatch.setattr(pipeline, "PREDICT_CHUNK", 256)  # pieces of 8 of the 40 x 32 px' rows
    cube, gt = small_scene
    ws = Workspace(
        cube, tiny_model, spec=SPEC, device="cpu", cache_dir=tmp_path,
        classifier=ClassifierConfig(method="paper", n_models=1, epochs=3, update_epochs=1),
    )  # fmt: skip
    ws.set_labels(_strokes(gt.data, 4, seed=0), gt.class_names, gt.colors)
    started, regions, filled = [], [], []
    ws.events.partial.connect(started.append)
    ws.events.partial_region.connect(regions.append)
    ws.events.partial_region.connect(lambda _: filled.append(ws.partial.class_map > 0))

    job = ws.train_job()
    prediction = job.run(progress=False)
    assert started == [job.partial] and ws.partial is None  # complete: the prediction now
    assert len(regions) >= 3 and (covered(regions, cube.shape) == 1).all()
    for n, mask in enumerate(filled, start=1):  # every pixel of the scene is valid
        np.testing.assert_array_equal(mask, covered(regions[:n], cube.shape) > 0)
    assert np.shares_memory(prediction.class_map, job.partial.class_map)  # not copied
    plain = pipeline.predict(ws.bundle, cube, "cpu", store=ws.features, progress=False)
    np.testing.assert_array_equal(prediction.class_map, plain[0])
    np.testing.assert_allclose(prediction.confidence, plain[1], rtol=1e-6)

    ws.set_labels(np.where(ws.labels > 0, ws.labels, _strokes(gt.data, 2, seed=5)))
    job, regions[:] = ws.update_job(), []
    for record in job.steps:  # what the panel's worker does, stopped after two pieces
        job.on_record(record)
        if len(regions) == 2:
            break
    job.steps.close()
    done = covered(regions, cube.shape) > 0
    assert ws.prediction is prediction and ws.partial is job.partial
    np.testing.assert_array_equal(job.partial.class_map > 0, done)
    assert (job.partial.confidence[~done] == 0).all()
    assert job.stopped().startswith(f"stopped: {100 * done.mean():.0f} % of the scene predicted")

    iter_predict, started[:], regions[:] = pipeline.iter_predict, [], []

    def no_regions(*args, **kwargs):
        return (yield from forward(iter_predict(*args, **kwargs), region=None))

    monkeypatch.setattr(pipeline, "iter_predict", no_regions)
    again = ws.predict(cube, progress=False)
    assert not started and not regions
    np.testing.assert_array_equal(again.class_map, prediction.class_map)
