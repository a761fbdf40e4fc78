"""Prediction tile by tile: the maps of the whole-scene path, written as tiles finish, in memory
bounded by the tile; the writers stream the maps into their files."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_mtmsd._progress import run
from napari_mtmsd.features import FeatureSpec
from napari_mtmsd.pipeline import iter_features, iter_predict, predict, train

# small tiles, so the 40 x 32 scene is cut into 2 x 2 of them (cores of 24 pixels, the few-label
# head's halo is 20: each tile needs all its neighbours)
SPEC = FeatureSpec(
    timesteps=(100, 400, 700), stages=(0, 1, 2), bf16=False, tile=48, margin=4, noise_draws=1
)
FAST = dict(n_models=2, epochs=5, k=8)


def few_labels(gt: np.ndarray, per_class: int = 3, seed: int = 0) -> np.ndarray:
    labels, rng = np.zeros_like(gt), np.random.default_rng(seed)
    for c in np.unique(gt[gt > 0]):
        rr, cc = np.nonzero(gt == c)
        pick = rng.choice(len(rr), per_class, replace=False)
        labels[rr[pick], cc[pick]] = c
    return labels


@pytest.fixture(scope="module")
def bundles(tiny_model, small_scene, tmp_path_factory):
    """A bundle of each method and the whole-scene feature store they were trained on."""
    cube, gt = small_scene
    cache = tmp_path_factory.mktemp("cache")
    labels = few_labels(np.asarray(gt.data))
    out = {m: train(tiny_model, cube, labels, SPEC, device="cpu", cache_dir=cache, method=m,
                    progress=False, **FAST) for m in ("paper", "few-label")}  # fmt: skip
    return out, run(iter_features(tiny_model, cube, SPEC, "cpu", cache))


class _PerTile:
    """Every pixel's features as the U-Net's tiles give them (``features.extract_pixels``), with
    the store's reading API: what the tiled path computes without a cache. The cache stores the
    stage maps stitched across tiles (docs/features.md, "Storage"), whose features differ from
    these near the seams."""

    def __init__(self, model, cube, spec):
        from napari_mtmsd.features import extract_pixels

        H, W = cube.data.shape[:2]
        self.centre, self.glob = extract_pixels(model, cube, np.argwhere(np.ones((H, W), bool)),
                                                spec, "cpu")  # fmt: skip
        self.shape = (H, W, *self.centre.shape[1:])

    def pixels(self, coords):
        flat = coords[:, 0] * self.shape[1] + coords[:, 1]
        return self.centre[flat], self.glob[flat]

    def chunks(self, size):
        n = len(self.centre)
        for s in range(0, n, size):
            e = min(s + size, n)
            yield slice(s, e), self.centre[s:e], self.glob[s:e]


def _whole(bundle, cube, source):
    """The whole-scene maps from ``source`` (the few-label scene smoothed at once, the painted
    pixels held as on the cube they were painted on)."""
    from napari_mtmsd.fewlabel import FewLabelScene, SceneVectors

    if bundle.method == "paper":
        return predict(bundle, cube, device="cpu", store=source, progress=False)
    emb = bundle.classifier.embedding
    vectors = SceneVectors.of_features(bundle.model, cube, source, emb)
    scene = FewLabelScene.of(source, emb, vectors, cube.sha256())
    return scene.predict(bundle.classifier, cube.valid_mask())


def records(job):
    out = []
    result = run(job, out.append)
    return result, out


@pytest.mark.parametrize("method", ["paper", "few-label"])
def test_tiles_give_the_whole_scene_maps(bundles, small_scene, tiny_model, method, monkeypatch):
    from napari_mtmsd import pipeline

    monkeypatch.setattr(pipeline, "WHOLE_SCENE_MB", 0)  # the few-label head too, tile by tile
    (by_method, store), (cube, gt) = bundles, small_scene
    bundle = by_method[method]
    H, W = gt.data.shape
    whole_tiles = _whole(bundle, cube, _PerTile(tiny_model, cube, SPEC))
    whole = _whole(bundle, cube, store)
    out = (np.zeros((H, W), np.int32), np.zeros((H, W), np.float32))
    maps, recs = records(iter_predict(bundle, cube, "cpu", out=out))  # from the U-Net, tiled
    assert maps[0] is out[0] and maps[1] is out[1]  # filled in place
    np.testing.assert_array_equal(maps[0], whole_tiles[0])
    np.testing.assert_allclose(maps[1], whole_tiles[1], atol=1e-6)
    # from the store tile by tile, and (few-label) from the kept scene band by band: the same
    for kwargs in ({"store": store}, {"store": store, "reuse": {}}):
        again = predict(bundle, cube, device="cpu", progress=False, **kwargs)
        np.testing.assert_array_equal(again[0], whole[0])
        np.testing.assert_allclose(again[1], whole[1], atol=1e-6)
    # every pixel is in exactly one finished region, and progress ends at the scene's pixels
    covered = np.zeros((H, W), int)
    for r in recs:
        if "region" in r:
            (r0, r1), (c0, c1) = r["region"]
            covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all() and len([r for r in recs if "region" in r]) == 4
    assert recs[-1]["step"] == recs[-1]["total"] == H * W


def test_a_halo_wider_than_a_tile_reaches_further_tiles(tiny_model, small_scene, tmp_path):
    """Tiles of 16-pixel cores, the few-label halo 20: a tile's maps need tiles two away."""
    import dataclasses

    from napari_mtmsd.tiled import plan_work

    cube, gt = small_scene
    spec = dataclasses.replace(SPEC, tile=40)
    bundle = train(tiny_model, cube, few_labels(np.asarray(gt.data)), spec, device="cpu",
                   cache_dir=tmp_path, method="few-label", progress=False)  # fmt: skip
    whole = _whole(bundle, cube, _PerTile(tiny_model, cube, spec))
    plan = run(plan_work(bundle, cube, "cpu")).plan
    assert len(plan.tiles) == 6 and max(len(n) for n in plan.needs) == 6  # 3 x 2 tiles
    tiled = predict(bundle, cube, device="cpu", progress=False)
    np.testing.assert_array_equal(tiled[0], whole[0])
    np.testing.assert_allclose(tiled[1], whole[1], atol=1e-6)


def test_patch_features_are_refused_for_a_whole_scene(bundles, small_scene):
    import dataclasses

    from napari_mtmsd.errors import InputError

    bundle = bundles[0]["paper"]
    patch = dataclasses.replace(bundle, spec=dataclasses.replace(SPEC, mode="patch"))
    with pytest.raises(InputError, match="dense features"):
        predict(patch, small_scene[0], device="cpu", progress=False)


def test_a_stopped_prediction_keeps_the_finished_tiles(bundles, small_scene):
    (by_method, _), (cube, gt) = bundles, small_scene
    H, W = gt.data.shape
    out = (np.zeros((H, W), np.int32), np.zeros((H, W), np.float32))
    job = iter_predict(by_method["paper"], cube, "cpu", out=out)
    first = next(r for r in job if "region" in r)
    job.close()
    (r0, r1), (c0, c1) = first["region"]
    done = np.zeros((H, W), bool)
    done[r0:r1, c0:c1] = True
    assert (out[0][done] > 0).all() and (out[1][done] > 0).all()
    assert not out[0][~done].any() and not out[1][~done].any()


def _npy_scene(tmp_path, size: int, seed: int = 3):
    """A synthetic ``size`` x ``size`` cube written as .npy and opened memory-mapped."""
    from napari_mtmsd.io import read_cube
    from napari_mtmsd.samples import synthetic_scene

    cube, _ = synthetic_scene(height=size, width=size, bands=30, n_classes=4, seed=seed)
    path = tmp_path / f"scene{size}.npy"
    np.save(path, np.asarray(cube.data, np.float32))
    return read_cube(path)


def _peak_mb(job) -> float:
    tracemalloc.start()
    try:
        run(job)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["paper", "few-label"])
def test_memory_stays_flat_as_the_scene_grows(bundles, tmp_path, method, monkeypatch):
    """Peak numpy memory of a prediction into memory maps, on scenes of 4x and 16x the pixels
    of a tile's core: features (the whole-scene store would be 1.7 MB at 4x, 7 MB at 16x),
    vectors and maps are held a tile at a time, so the peak hardly moves. The passes over the
    whole cube (valid pixels, the guide's scaling) read row chunks of at most 64 MB: 64 kB
    here, to the scale of these scenes; the random walker's reach is cut to that scale too
    (at 40 pixels a window would hold most of these scenes)."""
    import napari_mtmsd.fewlabel
    import napari_mtmsd.io._types
    import napari_mtmsd.tiled
    from napari_mtmsd.io import scratch_maps

    monkeypatch.setattr(napari_mtmsd.io._types, "CHUNK_BYTES", 1 << 16)
    monkeypatch.setattr(napari_mtmsd.tiled, "_ROW_BYTES", 1 << 16)
    monkeypatch.setattr(napari_mtmsd.fewlabel, "RW_REACH", 6)
    bundle = bundles[0][method]
    peaks = []
    for size in (48, 96, 192):
        cube = _npy_scene(tmp_path, size)
        with scratch_maps(tmp_path, f"m{size}", (size, size)) as out:
            peaks.append(_peak_mb(iter_predict(bundle, cube, "cpu", out=out)))
            assert out[0].min() >= 1  # every pixel classified
    assert peaks[2] < 1.5 * peaks[1] + 0.5, peaks
    assert peaks[2] < 8, peaks


def test_maps_are_written_a_tile_at_a_time(tmp_path, monkeypatch):
    """GeoTIFF maps go a 256 x 256 tile at a time, ENVI ones a row chunk of at most 64 MB at a
    time (256 kB here, to the scale of this map): never converted whole."""
    import tifffile

    import napari_mtmsd.io._types
    from napari_mtmsd.io import Georef, read_labels, scratch_maps, write_prediction

    monkeypatch.setattr(napari_mtmsd.io._types, "CHUNK_BYTES", 1 << 18)
    H, W = 2600, 2400
    georef = Georef(transform=(500000.0, 30.0, 0.0, 4200000.0, 0.0, -30.0), crs="EPSG:32633")
    small = np.ones((4, 4), np.int32)
    for fmt in ("tif", "hdr"):  # the libraries' first use (pyproj's database) is not the maps'
        write_prediction(tmp_path / "warm", fmt, fmt, small, small.astype(np.float32), None,
                         None, georef)  # fmt: skip
    with scratch_maps(tmp_path, "big", (H, W)) as (classes, conf):
        classes[:] = (np.arange(H)[:, None] // 100 + np.arange(W)[None] // 100) % 7 + 1
        conf[:] = 0.5
        assert len(list(tmp_path.glob(".tmp-*"))) == 2  # hidden: swept if the process dies
        for fmt in ("tif", "hdr"):
            tracemalloc.start()
            paths = write_prediction(tmp_path / fmt, "scene", fmt, classes, conf, None, None,
                                     georef)  # fmt: skip
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            # converting either whole map would take 6 MB (uint8) or 25 MB (float32)
            assert peak < 2 * 2**20, (fmt, peak)
            back = read_labels(paths[0])
            np.testing.assert_array_equal(back.data, classes)
            assert back.georef.transform == georef.transform
    with tifffile.TiffFile(tmp_path / "tif" / "scene_classes.tif") as tif:
        assert tif.pages[0].is_tiled
    assert not list(tmp_path.glob(".tmp-*"))  # the memory maps are gone


def test_a_stopped_predict_command_leaves_no_file(bundles, small_scene, tmp_path, monkeypatch):
    """Ctrl-C during ``napari-mtmsd predict``: exit 130, no map and no scratch file left."""
    import napari_mtmsd.tiled as tiled
    from napari_mtmsd.cli import main

    cube, _ = small_scene
    np.save(tmp_path / "scene.npy", np.asarray(cube.data))
    bundles[0]["paper"].save(tmp_path / "clf")
    calls, real = [], tiled.TileWork.maps

    def interrupted(self, k, parts):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, k, parts)

    monkeypatch.setattr(tiled.TileWork, "maps", interrupted)
    out = tmp_path / "maps"
    args = [str(tmp_path / "scene.npy"), "--classifier", str(tmp_path / "clf"), "-o", str(out)]
    assert main(["predict", *args, "--device", "cpu"]) == 130
    assert len(calls) == 2 and not list(out.iterdir())


def test_few_label_training_from_the_labelled_tiles_equals_the_whole_scene(
    tiny_model, small_scene, bundles, monkeypatch
):
    """Above ``WHOLE_SCENE_MB`` the few-label head is fitted from the tiles holding labels
    (memory bounded by tiles); below, from the whole smoothed scene: the same training vectors,
    in the same order, so the same classifier."""
    from napari_mtmsd import pipeline

    (_, store), (cube, gt) = bundles, small_scene
    labels = few_labels(np.asarray(gt.data), per_class=2, seed=3)
    labels[:24, :24] = 0  # the top-left tile holds no label: its maps are not formed
    kw = dict(spec=SPEC, device="cpu", store=store, method="few-label")
    whole = run(pipeline.iter_train(tiny_model, cube, labels, **kw)).classifier.head
    monkeypatch.setattr(pipeline, "WHOLE_SCENE_MB", 0)
    monkeypatch.setattr(pipeline, "_few_label_scene", None)  # fails if the whole scene is made
    tiled = run(pipeline.iter_train(tiny_model, cube, labels, **kw)).classifier.head
    np.testing.assert_array_equal(tiled.y_train, whole.y_train)
    np.testing.assert_allclose(tiled.x_train, whole.x_train, rtol=1e-4, atol=1e-4)
    rows = whole.x_train[:50]
    np.testing.assert_allclose(
        tiled.predict_proba_rows(rows), whole.predict_proba_rows(rows), atol=1e-3
    )


def test_a_large_scene_keeps_no_whole_scene_arrays(bundles, small_scene, monkeypatch):
    """Above ``WHOLE_SCENE_MB`` an Update's ``reuse`` keeps nothing of the few-label scene (its
    arrays would grow with the scene) and the maps are still the whole scene's."""
    from napari_mtmsd import pipeline

    (by_method, store), (cube, _) = bundles, small_scene
    kept: dict = {}
    small = pipeline.predict(by_method["few-label"], cube, "cpu", store=store, reuse=kept,
                             progress=False)  # fmt: skip
    assert "few-label" in kept
    monkeypatch.setattr(pipeline, "WHOLE_SCENE_MB", 0)
    kept = {}
    large = pipeline.predict(by_method["few-label"], cube, "cpu", store=store, reuse=kept,
                             progress=False)  # fmt: skip
    assert kept == {}
    np.testing.assert_array_equal(large[0], small[0])


def test_stored_features_are_read_a_band_at_a_time(bundles, small_scene, monkeypatch):
    """Forming a tile's stored features takes seconds on a large tile: with reading slowed to
    2 ms a pixel (a 24 x 24 tile: 1.2 s), the few-label prediction from the store still yields
    a record within a second (issue 15)."""
    import time

    from napari_mtmsd import pipeline

    (by_method, store), (cube, _) = bundles, small_scene
    read = store.pixels

    def slow(coords):
        time.sleep(2e-3 * len(coords))
        return read(coords)

    monkeypatch.setattr(store, "pixels", slow)
    monkeypatch.setattr(pipeline, "WHOLE_SCENE_MB", 0)
    stamps: list[float] = []
    pipeline.predict(by_method["few-label"], cube, "cpu", store=store, progress=False,
                     callback=lambda _: stamps.append(time.perf_counter()))  # fmt: skip
    assert max(np.diff(stamps)) < 1.0, np.diff(stamps)


def test_an_update_forms_only_the_new_labels_features(
    tiny_model, small_scene, bundles, monkeypatch
):
    """The paper's heads, trained twice with one ``reuse``: the second training forms the
    features of the pixels labelled since (a stored pixel's vectors are formed from its whole
    window), and gets the same features for the others."""
    from napari_mtmsd.pipeline import iter_train, labelled_pixels

    (_, store), (cube, gt) = bundles, small_scene
    first = few_labels(np.asarray(gt.data), per_class=2, seed=1)
    more = np.where(first > 0, first, few_labels(np.asarray(gt.data), per_class=2, seed=2))
    read: list[int] = []
    pixels = store.pixels
    monkeypatch.setattr(store, "pixels", lambda c: (read.append(len(c)), pixels(c))[1])
    reuse: dict = {}
    kw = dict(spec=SPEC, device="cpu", store=store, method="paper", reuse=reuse, **FAST)
    run(iter_train(tiny_model, cube, first, **kw))
    run(iter_train(tiny_model, cube, more, **kw))
    n_first, n_more = len(labelled_pixels(first)[1]), len(labelled_pixels(more)[1])
    assert read == [n_first, n_more - n_first]
    coords = labelled_pixels(more)[0]
    kept = np.stack([reuse["pixels"][1][tuple(rc)][0] for rc in coords.tolist()])
    np.testing.assert_array_equal(kept, pixels(coords)[0])
