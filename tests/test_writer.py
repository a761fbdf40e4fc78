"""Writers: label maps and cubes round-trip through every format, atomically."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd import io
from napari_mtmsd._writer import napari_write_cube, napari_write_labels
from napari_mtmsd.errors import InputError
from napari_mtmsd.io import _envi

NAMES = ["water", "forest", "field"]
COLORS = np.array([[0, 0, 0], [0, 0, 255], [0, 128, 0], [255, 255, 0]], np.uint8)


@pytest.fixture
def gt() -> np.ndarray:
    gt = np.zeros((7, 9), np.uint8)
    gt[1:4, 2:6] = 1
    gt[4:, :3] = 2
    gt[5, 7] = 3
    return gt


@pytest.mark.parametrize(
    ("name", "keeps_names"),
    [("gt.hdr", True), ("gt.img", True), ("gt.mat", True), ("gt.tif", True), ("gt.npy", False)],
)
def test_labels_round_trip(tmp_path, gt, name, keeps_names):
    written = io.write_labels(tmp_path / name, gt, class_names=NAMES, colors=COLORS)
    back = io.read_labels(written)
    np.testing.assert_array_equal(back.data, gt)
    if keeps_names:
        assert back.class_names == NAMES
        np.testing.assert_array_equal(back.colors, COLORS)
    assert not list(tmp_path.glob(".tmp-*"))


def test_envi_classification_header(tmp_path, gt):
    hdr = io.write_labels(tmp_path / "cls.hdr", io.LabelMap(gt, NAMES, COLORS))
    text = hdr.read_text()
    assert text.startswith("ENVI\n")
    assert "file type = ENVI Classification" in text and "classes = 4" in text
    assert "class names = { Unclassified , water , forest , field }" in text
    assert "class lookup = { 0 , 0 , 0 , 0 , 0 , 255 ," in text
    assert (tmp_path / "cls.img").stat().st_size == gt.size


def test_describe_classification(tmp_path, gt):
    info = io.describe(io.write_labels(tmp_path / "c.hdr", gt, class_names=NAMES))
    assert info["kind"] == "labels" and info["class_names"] == NAMES
    assert info["pixels_per_class"] == {1: 12, 2: 9, 3: 1}


def test_labels_default_colours_and_names(tmp_path, gt):
    back = io.read_labels(io.write_labels(tmp_path / "d.hdr", gt))
    assert back.class_names == ["class 1", "class 2", "class 3"]
    assert back.colors.shape == (4, 3) and len({tuple(c) for c in back.colors}) == 4


def test_cube_round_trip_keeps_metadata(tmp_path):
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    cube = io.Cube(
        data,
        wavelengths=np.array([450.5, 550, 650, 900]),
        wavelength_units="nm",
        ignore_value=-1.0,
        name="c",
        metadata={"fwhm": [10, 10, 12, 12], "default_bands": [2, 1, 0],
                  "reflectance_scale_factor": 1.0, "band_names": ["a", "b", "c", "d"]},
    )  # fmt: skip
    hdr = io.write_cube(tmp_path / "c.hdr", cube)
    back = io.read_cube(hdr)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.wavelengths, cube.wavelengths)
    assert back.wavelength_units == "nm" and back.ignore_value == -1.0
    assert back.metadata["default_bands"] == [2, 1, 0]
    np.testing.assert_allclose(back.metadata["fwhm"], [10, 10, 12, 12])
    assert back.metadata["band_names"] == ["a", "b", "c", "d"]


def test_cube_round_trip_of_a_memmap_in_chunks(tmp_path, envi_file, monkeypatch):
    from napari_mtmsd.io import _types

    monkeypatch.setattr(_types, "CHUNK_BYTES", 50)  # several chunks even for a tiny cube
    data = np.arange(8 * 3 * 5, dtype=np.int16).reshape(8, 3, 5)
    src = io.read_cube(envi_file(tmp_path / "src.hdr", data, "bsq", 1))
    back = io.read_cube(io.write_cube(tmp_path / "out", src))
    np.testing.assert_array_equal(back.data, data)


def test_failed_write_leaves_nothing(tmp_path, gt, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_envi.envi, "write_envi_header", boom)
    with pytest.raises(OSError, match="disk full"):
        io.write_labels(tmp_path / "x.hdr", gt)
    assert list(tmp_path.iterdir()) == []


def test_existing_files_replaced_whole(tmp_path, gt):
    io.write_labels(tmp_path / "r.hdr", gt)
    io.write_labels(tmp_path / "r.hdr", gt[:3, :4])
    assert io.read_labels(tmp_path / "r.hdr").data.shape == (3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.hdr", "r.img"]


@pytest.mark.parametrize("name", ["x.png", "x.csv"])
def test_unsupported_extensions(tmp_path, gt, name):
    with pytest.raises(InputError, match="label maps are written as"):
        io.write_labels(tmp_path / name, gt)


def test_napari_labels_writer_uses_layer_metadata(tmp_path, gt):
    meta = {"name": "gt", "metadata": {"class_names": NAMES, "colors": COLORS.tolist()}}
    written = napari_write_labels(str(tmp_path / "n.hdr"), gt, meta)
    assert written == [str(tmp_path / "n.hdr"), str(tmp_path / "n.img")]
    back = io.read_labels(written[0])
    assert back.class_names == NAMES
    written = napari_write_labels(
        str(tmp_path / "f.mat"), gt, {"features": {"class_name": ["unlabelled", *NAMES]}}
    )
    assert io.read_labels(written[0]).class_names == NAMES


def test_napari_cube_writer_band_first(tmp_path):
    cube = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(
        4, 3, 5
    )  # (B, H, W) as the reader shows it
    meta = {
        "name": "c",
        "metadata": {"wavelengths": [400, 500, 600, 700], "wavelength_units": "nm"},
    }
    written = napari_write_cube(str(tmp_path / "c.img"), cube, meta)
    back = io.read_cube(written[0])
    assert back.shape == (3, 5, 4)
    np.testing.assert_array_equal(back.data, np.moveaxis(cube, 0, 2))
    np.testing.assert_allclose(back.wavelengths, [400, 500, 600, 700])
