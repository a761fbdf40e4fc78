"""npe2 reader: what it claims, the layers it makes, and how it reports bad files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio
import tifffile

from napari_mtmsd import _reader, io
from napari_mtmsd._reader import get_reader


@pytest.fixture
def notes(monkeypatch) -> list[tuple[str, str]]:
    """Notifications the reader sends, instead of napari's."""
    got: list[tuple[str, str]] = []
    monkeypatch.setattr(_reader, "_notify", lambda level, msg: got.append((level, msg)))
    return got


def _spectral_cube(shape=(20, 30, 40)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random(shape) * 1000 + 100).astype(np.uint16)


def _not_ours(tmp_path):
    (tmp_path / "text.txt").write_text("hello")
    (tmp_path / "radiance.hdr").write_text("#?RADIANCE\n")
    (tmp_path / "lonely.img").write_bytes(b"\0" * 64)
    (tmp_path / "fake.mat").write_text("not matlab")
    np.save(tmp_path / "vector.npy", np.arange(4))
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "float2d.npy", np.ones((4, 4)))
    tifffile.imwrite(tmp_path / "photo.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "gray.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    return [
        "text.txt", "radiance.hdr", "lonely.img", "fake.mat", "vector.npy", "strings.npy",
        "float2d.npy", "photo.tif", "gray.tif", "broken.tif", "absent.hdr", ".",
    ]  # fmt: skip


def test_get_reader_declines_what_it_does_not_read(tmp_path):
    for name in _not_ours(tmp_path):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "text.txt")]) is None


def test_get_reader_claims_hsi_files(tmp_path, envi_file):
    envi_file(tmp_path / "e.hdr", _spectral_cube((4, 4, 6)))
    sio.savemat(tmp_path / "m.mat", {"x": np.ones((3, 3, 3))})
    np.save(tmp_path / "c.npy", np.ones((3, 3, 8)))
    np.save(tmp_path / "l.npy", np.ones((3, 3), np.uint8))
    tifffile.imwrite(tmp_path / "c.tif", np.ones((6, 5, 5), np.uint16))
    for name in ["e.hdr", "e.img", "m.mat", "c.npy", "l.npy", "c.tif"]:
        assert get_reader(str(tmp_path / name)) is not None, name


def test_cube_layers(tmp_path, envi_file):
    data = _spectral_cube()
    data[0, 0, 0] = 65000  # a hot pixel must not set the contrast
    wl = ", ".join(f"{w:g}" for w in np.linspace(400, 1000, 40))
    hdr = envi_file(tmp_path / "s.hdr", data, "bip", extra=f"wavelength = {{{wl}}}\n")
    layers = get_reader(str(hdr))(str(hdr))
    (cube, cube_kw, cube_type), (rgb, rgb_kw, rgb_type) = layers
    assert cube_type == rgb_type == "image"
    assert cube.shape == (40, 20, 30)  # band first
    assert isinstance(cube, np.memmap)  # a lazy view of the file, not a copy
    np.testing.assert_array_equal(cube[5], data[:, :, 5])
    lo, hi = cube_kw["contrast_limits"]
    assert 100 <= lo < hi < 1100
    assert cube_kw["axis_labels"] == ("band", "y", "x")
    assert len(cube_kw["metadata"]["wavelengths"]) == 40
    assert cube_kw["metadata"]["band_axis"] == 0
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.float32 and rgb_kw["rgb"]
    assert 0 <= rgb.min() and rgb.max() <= 1
    wls = np.linspace(400, 1000, 40)
    assert rgb_kw["metadata"]["rgb_bands"] == [
        int(np.abs(wls - t).argmin()) for t in (640, 550, 460)
    ]
    # every tuple makes a real napari layer
    from napari.layers import Layer

    for data_, kw, kind in layers:
        Layer.create(data_, kw, kind)


@pytest.mark.parametrize(
    ("extra", "expected", "how"),
    [
        ("default bands = {5, 3, 1}\n", [4, 2, 0], "header default bands"),
        ("wavelength = {" + ", ".join(str(1000 + 10 * i) for i in range(10)) + "}\n",
         [7, 4, 2], "three spread bands"),  # infrared only: no visible bands
        ("", [7, 4, 2], "three spread bands"),
    ],
)  # fmt: skip
def test_rgb_band_choice(tmp_path, envi_file, extra, expected, how):
    hdr = envi_file(tmp_path / "d.hdr", _spectral_cube((5, 6, 10)), extra=extra)
    cube = io.read_cube(hdr)
    assert _reader.rgb_bands(cube) == (expected, how)


def test_large_preview_is_strided(monkeypatch):
    monkeypatch.setattr(_reader, "PREVIEW_MAX_SIDE", 8)
    rgb, kw, _ = _reader.cube_layers(io.Cube(_spectral_cube((20, 30, 5))))[1]
    assert rgb.shape == (5, 8, 3) and kw["scale"] == (4, 4)


def test_nan_and_ignore_values_do_not_break_contrast():
    data = np.random.default_rng(0).random((10, 10, 6)).astype(np.float32)
    data[:5] = np.nan
    data[5, 5] = np.inf
    layers = _reader.cube_layers(io.Cube(data))
    lo, hi = layers[0][1]["contrast_limits"]
    assert np.isfinite([lo, hi]).all() and 0 <= lo < hi <= 1
    assert np.isfinite(layers[1][0]).all()
    allnan = _reader.cube_layers(io.Cube(np.full((4, 4, 3), np.nan, np.float32)))
    assert allnan[0][1]["contrast_limits"] == (0.0, 1.0)


def test_labels_layer_with_names_and_colours(tmp_path):
    gt = np.array([[0, 1], [2, 3]], np.uint8)
    path = io.write_labels(tmp_path / "g.hdr", gt, ["a", "b", "c"], [[0, 0, 0], [255, 0, 0],
                           [0, 255, 0], [0, 0, 255]])  # fmt: skip
    ((data, kw, kind),) = get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_array_equal(data, gt)
    assert list(kw["features"]["class_name"]) == ["unlabelled", "a", "b", "c"]
    assert kw["metadata"]["class_names"] == ["a", "b", "c"]
    np.testing.assert_allclose(kw["colormap"].map(np.array([1]))[0], [1, 0, 0, 1])
    from napari.layers import Labels

    layer = Labels(data, **kw)
    assert layer.features["class_name"][2] == "b"


def test_mat_with_cube_and_labels_and_extra_cube(tmp_path, notes):
    sio.savemat(
        tmp_path / "both.mat",
        {
            "cube": np.ones((6, 5, 8)),
            "cube2": np.ones((2, 2, 2)),
            "gt": np.eye(6, 5, dtype=np.uint8),
        },
    )
    layers = get_reader(str(tmp_path / "both.mat"))(str(tmp_path / "both.mat"))
    assert [t for *_, t in layers] == ["image", "image", "labels"]
    assert notes and "cube2" in notes[0][1] and notes[0][0] == "info"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: sio.savemat(p / "e.mat", {}), "holds no variables"),
        (lambda p: sio.savemat(p / "e.mat", {"v": np.arange(4.0)}), "no hyperspectral cube"),
    ],
)
def test_unusable_mat_gives_one_clear_notification(tmp_path, notes, make, message):
    make(tmp_path)
    path = str(tmp_path / "e.mat")
    assert get_reader(path)(path) == [(None,)]
    assert len(notes) == 1 and notes[0][0] == "error" and message in notes[0][1]
    assert "e.mat" in notes[0][1]


def test_truncated_envi_gives_a_notification(tmp_path, envi_file, notes):
    hdr = envi_file(tmp_path / "t.hdr", _spectral_cube((4, 4, 6)))
    hdr.with_suffix(".img").write_bytes(b"\0" * 10)
    reader = get_reader(str(hdr))
    assert reader is not None  # claimed from the header alone
    assert reader(str(hdr)) == [(None,)]
    assert "too short" in notes[0][1]


def test_unexpected_errors_are_reported_not_raised(tmp_path, envi_file, notes, monkeypatch):
    hdr = envi_file(tmp_path / "u.hdr", _spectral_cube((4, 4, 6)))

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(_reader, "read_layers", broken)
    assert _reader.read_paths(str(hdr)) == [(None,)]
    assert "u.hdr" in notes[0][1] and "RuntimeError: boom" in notes[0][1]


def test_lazy_v73_cube_makes_a_napari_layer(tmp_path, mat73_file, monkeypatch):
    from napari.layers import Image

    from napari_mtmsd.io import _mat

    monkeypatch.setattr(_mat, "LAZY_BYTES", 0)
    data = _spectral_cube((9, 7, 6))
    path = str(mat73_file(tmp_path / "lazy.mat", cube=data))
    (cube, kw, _), (rgb, _, _) = get_reader(path)(path)
    assert isinstance(cube, io.LazyArray) and cube.shape == (6, 9, 7)
    layer = Image(cube, **kw)
    np.testing.assert_array_equal(np.asarray(layer.data[4]), data[:, :, 4])
    assert rgb.shape == (9, 7, 3)
