"""The few-label head and the quick first map (fewlabel.py), the scene embedding (embedding.py)
and the suggestions (suggest.py), on small synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd.embedding import FeatureEmbedding
from napari_mtmsd.errors import InputError, ModelFileError
from napari_mtmsd.fewlabel import SceneVectors, SpatialSVM, classify
from napari_mtmsd.samples import synthetic_scene
from napari_mtmsd.splits import make_split
from napari_mtmsd.suggest import suggest


@pytest.fixture(scope="module")
def scene():
    cube, gt = synthetic_scene(48, 48, bands=30, n_classes=4, noise=0.08, seed=3)
    return cube, np.asarray(gt.data)


def _accuracy(class_map: np.ndarray, gt: np.ndarray, test: np.ndarray) -> float:
    return float((class_map[test] == gt[test]).mean())


def test_quick_map_from_few_labels_beats_the_unsmoothed_svm(scene):
    cube, gt = scene
    train, test = make_split(gt, "per-class:3", seed=0)
    labels = np.where(train, gt, 0)
    spectral = SceneVectors.of_spectra(cube)
    head, proba = classify(spectral, labels)
    class_map = head.classes_[proba.argmax(-1)]
    assert class_map.shape == gt.shape and set(np.unique(class_map)) <= {1, 2, 3, 4}
    np.testing.assert_allclose(proba.sum(-1), 1.0, atol=1e-5)
    # the spatial steps earn their place: the same SVM on the raw vectors does worse
    plain = SpatialSVM().fit(spectral.vectors, labels)
    raw = plain.predict_proba_rows(spectral.vectors.reshape(-1, spectral.vectors.shape[-1]))
    raw_map = plain.classes_[raw.argmax(-1)].reshape(gt.shape)
    assert _accuracy(class_map, gt, test) > _accuracy(raw_map, gt, test)
    assert _accuracy(class_map, gt, test) > 0.9
    again = classify(SceneVectors.of_spectra(cube), labels)[1]
    np.testing.assert_array_equal(proba, again)  # deterministic


def test_a_map_holds_its_painted_pixels(scene):
    """``classify`` (the quick map, and the recipe of every few-label map) gives every painted
    pixel its painted class, even one painted against its field, which the guided filter's
    map regularisation smooths away; deterministic."""
    from napari_mtmsd.spatial import regularise

    cube, gt = scene
    train = make_split(gt, "per-class:2", seed=3)[0]
    labels = np.where(train, gt, 0)
    r, c = np.argwhere(train & (gt == 1))[0]
    labels[r, c] = 2  # a user's call against the spectra of the field
    spectral = SceneVectors.of_spectra(cube)
    head, proba = classify(spectral, labels)
    np.testing.assert_array_equal(head.classes_[proba.argmax(-1)][train], labels[train])
    smoothed = head.smooth(spectral.vectors, spectral.guide)
    raw = head.predict_proba_rows(smoothed.reshape(-1, smoothed.shape[-1]))
    guided = regularise(raw.reshape(*gt.shape, -1), spectral.guide)
    assert head.classes_[guided[r, c].argmax()] == 1
    np.testing.assert_array_equal(classify(spectral, labels)[1], proba)


def test_quick_map_ignores_invalid_pixels(scene):
    """NaN pixels (a no-data hole) get class 0 and do not spread into their neighbours."""
    from napari_mtmsd.fewlabel import maps_of
    from napari_mtmsd.io import Cube

    cube, gt = scene
    data = np.array(cube.data, dtype=np.float32)
    data[10:14, 10:14] = np.nan
    holed = Cube(data=data, name="holed")
    labels = np.where(make_split(gt, "per-class:3", seed=0)[0], gt, 0)
    spectral = SceneVectors.of_spectra(holed)
    assert np.isfinite(spectral.vectors).all() and np.isfinite(spectral.guide).all()
    head, proba = classify(spectral, labels)
    class_map, confidence = maps_of(head.classes_, proba, holed.valid_mask())
    assert (class_map[10:14, 10:14] == 0).all() and (confidence[10:14, 10:14] == 0).all()
    assert np.isfinite(proba).all()
    ring = np.zeros(gt.shape, bool)
    ring[8:16, 8:16] = True
    ring[10:14, 10:14] = False
    whole_head, whole = classify(SceneVectors.of_spectra(cube), labels)
    whole_map = whole_head.classes_[whole.argmax(-1)]
    assert (class_map[ring] == whole_map[ring]).mean() >= 0.75


def test_spatial_svm_round_trips_through_arrays(scene):
    cube, gt = scene
    spectral = SceneVectors.of_spectra(cube)
    labels = np.where(make_split(gt, "per-class:5", seed=1)[0], gt, 0)
    head = SpatialSVM(c=5.0, n_spectral=10, gamma=1e-2)
    smoothed = head.smooth(spectral.vectors, spectral.guide)
    head.fit(smoothed, labels, scene="abc123")
    seeds = head.seed_image((0, 0), gt.shape, "abc123")
    proba = head.predict_proba(smoothed, spectral.guide, seeds)
    back = SpatialSVM.from_arrays(head.to_arrays())
    assert (back.c, back.feature_radius, back.eps, back.n_spectral, back.spectral_weight,
            back.edge, back.gamma, back.scene) == (5.0, 4, 1e-2, 10, 0.5, 1e-3, 1e-2, "abc123")  # fmt: skip
    np.testing.assert_array_equal(back.seeds, np.argwhere(labels > 0))
    np.testing.assert_array_equal(back.seed_image((0, 0), gt.shape, "abc123"), seeds)
    np.testing.assert_allclose(
        back.predict_proba(smoothed, spectral.guide, seeds), proba, atol=1e-6
    )


def test_painted_pixels_are_held_only_on_their_scene(scene):
    cube, gt = scene
    spectral = SceneVectors.of_spectra(cube)
    labels = np.where(make_split(gt, "per-class:2", seed=0)[0], gt, 0)
    head = SpatialSVM()
    head.fit(head.smooth(spectral.vectors, spectral.guide), labels, scene="digest-a")
    seeds = head.seed_image((10, 5), (20, 30), "digest-a")
    r, c = np.nonzero(labels[10:30, 5:35])
    assert (seeds >= 0).sum() == len(r)
    np.testing.assert_array_equal(head.classes_[seeds[r, c]], labels[10:30, 5:35][r, c])
    assert head.seed_image((0, 0), gt.shape, "digest-b") is None  # another scene: nothing held
    assert SpatialSVM().fit_rows(np.eye(2), [1, 2]).seed_image((0, 0), (4, 4)) is None


def test_the_spectral_view_is_averaged_in(scene):
    """With ``n_spectral`` the head averages a second SVM on the first components at half
    weight: its probabilities are the weighted mean of the two SVMs' own."""
    cube, gt = scene
    vectors = SceneVectors.of_spectra(cube).vectors
    labels = np.where(make_split(gt, "per-class:3", seed=2)[0], gt, 0)
    rows = vectors.reshape(-1, vectors.shape[-1])
    both = SpatialSVM(n_spectral=5).fit(vectors, labels).predict_proba_rows(rows)
    whole = SpatialSVM().fit(vectors, labels).predict_proba_rows(rows)
    first = SpatialSVM().fit(vectors[..., :5], labels).predict_proba_rows(rows[:, :5])
    np.testing.assert_allclose(both, (whole + 0.5 * first) / 1.5, atol=1e-6)


def test_spatial_svm_refuses_one_class_and_unfitted_use(scene):
    _, gt = scene
    vectors = np.random.default_rng(0).normal(size=(*gt.shape, 3)).astype(np.float32)
    one = np.zeros_like(gt)
    one[0, :3] = 2
    with pytest.raises(InputError, match="at least 2 classes"):
        SpatialSVM().fit(vectors, one)
    with pytest.raises(InputError, match="not fitted"):
        SpatialSVM().predict_proba_rows(vectors[0])
    two = one.copy()
    two[5, :3] = 4  # two classes: one signed distance becomes two probabilities
    p = SpatialSVM().fit(vectors, two).predict_proba_rows(vectors[0])
    assert p.shape == (gt.shape[1], 2)


class _Store:
    """The reading API of a feature store over in-memory (H, W, T, D) arrays."""

    def __init__(self, centre: np.ndarray, glob: np.ndarray):
        self.centre, self.glob, self.shape = centre, glob, centre.shape

    def pixels(self, coords):
        return self.centre[coords[:, 0], coords[:, 1]], self.glob[coords[:, 0], coords[:, 1]]

    def chunks(self, size):
        H, W = self.centre.shape[:2]
        c = self.centre.reshape(H * W, *self.centre.shape[2:])
        g = self.glob.reshape(H * W, *self.glob.shape[2:])
        for s in range(0, H * W, size):
            yield slice(s, min(s + size, H * W)), c[s : s + size], g[s : s + size]


def test_embedding_is_whitened_seeded_and_keeps_class_structure(scene):
    _, gt = scene
    rng = np.random.default_rng(0)
    # features (T = 3, D = 8): the class in channel 0 at every timestep of both vectors (as the
    # diffusion features repeat a signal across timesteps), noise in the others
    centre = rng.normal(size=(*gt.shape, 3, 8)).astype(np.float16)
    glob = rng.normal(size=(*gt.shape, 3, 8)).astype(np.float16)
    centre[..., 0] += 4 * gt[..., None]
    glob[..., 0] += 4 * gt[..., None]
    store = _Store(centre, glob)
    emb = FeatureEmbedding.fit(store, n_components=6, seed=0)
    out = emb.transform(store)
    assert out.shape == (*gt.shape, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1, 6).std(0), 1.0, rtol=0.1)
    again = FeatureEmbedding.from_arrays(emb.to_arrays())
    np.testing.assert_array_equal(again.transform(store), out)
    np.testing.assert_array_equal(
        FeatureEmbedding.fit(store, n_components=6, seed=0).components, emb.components
    )
    # the class channel dominates one component
    corr = [abs(np.corrcoef(out[..., i].ravel(), gt.ravel())[0, 1]) for i in range(6)]
    assert max(corr) > 0.9
    with pytest.raises(InputError, match="values per pixel"):
        emb.transform_rows(centre[0, :, :2], glob[0, :, :2])


def test_suggestions():
    proba = np.zeros((30, 30, 2), np.float32)
    proba[..., 0] = 1.0
    proba[5:9, 20:24] = [0.5, 0.5]  # an unsure patch
    proba[22:26, 4:8] = [0.6, 0.4]  # a less unsure one
    u = 1.0 - proba.max(-1)  # what the panel passes: one minus the confidence
    coords, scores = suggest(u, n=2, spacing=5, radius=1)
    assert len(coords) == 2 and scores[0] >= scores[1]
    assert 5 <= coords[0][0] < 9 and 20 <= coords[0][1] < 24
    assert 22 <= coords[1][0] < 26 and 4 <= coords[1][1] < 8
    # a labelled pixel inside the unsure patch takes it off the list
    labels = np.zeros((30, 30), int)
    labels[6, 21] = 1
    coords, _ = suggest(u, labels, n=1, spacing=5, radius=1)
    assert np.hypot(*(coords[0] - [6, 21])) >= 5
    # suggestions keep their distance from each other
    coords, _ = suggest(u, n=5, spacing=6, radius=1)
    d = np.hypot(*(coords[:, None] - coords[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(coords), 1)].min() >= 6
    with pytest.raises(InputError):
        suggest(u, n=0)
    with pytest.raises(InputError, match="expected \\(H, W\\)"):
        suggest(proba)


def test_auto_method_follows_the_labels_per_class():
    from napari_mtmsd.fewlabel import AUTO_MAX_PER_CLASS, resolve_method

    few = np.zeros((20, 20), int)
    few[0, :5], few[1, :5] = 1, 2
    many = np.zeros((20, 20), int)
    many[:4, :] = 1  # 80 pixels
    many[4:8, :] = 2
    assert resolve_method("auto", few) == "few-label"
    assert resolve_method("auto", many) == "paper"
    assert resolve_method("paper", few) == "paper"
    assert resolve_method("few-label", many) == "few-label"
    edge = np.zeros((20, 20), int)
    edge.ravel()[:AUTO_MAX_PER_CLASS] = 1
    edge.ravel()[200 : 200 + AUTO_MAX_PER_CLASS] = 2
    assert resolve_method("auto", edge) == "paper"
    with pytest.raises(InputError, match="expected 'auto'"):
        resolve_method("fast", few)


def test_few_label_classifier_on_diffusion_features(small_scene, tiny_model, tmp_path):
    from napari_mtmsd._progress import run
    from napari_mtmsd.fewlabel import FewLabelClassifier, FewLabelScene
    from napari_mtmsd.pipeline import iter_features

    cube, gt = small_scene
    gt = np.asarray(gt.data)
    store = run(iter_features(tiny_model, cube, device="cpu", cache_dir=tmp_path))
    embedding = FeatureEmbedding.fit(store, n_components=8)
    scene_vectors = SceneVectors.of_features(tiny_model, cube, store, embedding)
    n_spec = tiny_model.preprocessor.n_components
    assert scene_vectors.vectors.shape == (*gt.shape, n_spec + 8)
    train, test = make_split(gt, "per-class:3", seed=0)
    scene = FewLabelScene.of(store, embedding, scene_vectors)
    assert scene.fits(store) and scene.fits(store, embedding)
    assert not scene.fits(store, FeatureEmbedding.from_arrays(embedding.to_arrays()))
    clf = scene.fit(np.where(train, gt, 0))
    class_map, confidence = scene.predict(clf, cube.valid_mask())
    assert class_map.dtype == np.int32 and confidence.dtype == np.float32
    assert _accuracy(class_map, gt, test) > 0.6  # 4 classes, 3 labels each, a 30-step model
    clf.save(tmp_path / "clf")
    back = FewLabelClassifier.load(tmp_path / "clf")
    again = FewLabelScene.of(store, back.embedding, SceneVectors.of_features(
        tiny_model, cube, store, back.embedding))  # fmt: skip
    np.testing.assert_array_equal(again.predict(back, cube.valid_mask())[0], class_map)
    (tmp_path / "clf" / "arrays.safetensors").write_bytes(b"damaged")
    with pytest.raises(ModelFileError, match=r"arrays\.safetensors"):
        FewLabelClassifier.load(tmp_path / "clf")


def test_suggestions_on_a_large_uncertain_region_are_quick():
    """One uncertain blob of a megapixel: the greedy spacing check is a look-up per pixel."""
    import time

    yy, xx = np.mgrid[:1000, :1000]
    u = (1.0 / (1.0 + np.hypot(yy - 500, xx - 500))).astype(np.float32)  # one peak: the
    # pixels in score order keep landing next to places already taken
    t0 = time.perf_counter()
    coords, _ = suggest(u, n=50, spacing=8, radius=0)
    assert len(coords) == 50 and time.perf_counter() - t0 < 10
    d = np.hypot(*(coords[:, None] - coords[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(50, 1)].min() >= 8
    # the same at every edge and corner of the scene (the blocked disk is clipped there)
    for peak in ((0, 0), (999, 999), (0, 500), (500, 999)):
        u = (1.0 / (1.0 + np.hypot(yy - peak[0], xx - peak[1]))).astype(np.float32)
        coords, _ = suggest(u, n=20, spacing=8, radius=1)
        assert len(coords) == 20 and tuple(coords[0]) == peak
