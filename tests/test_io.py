"""napari_mtmsd.io: every reader on real fixtures and on files written here, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio
import tifffile

from napari_mtmsd import io
from napari_mtmsd.errors import InputError
from napari_mtmsd.io import _mat

COMMON_DTYPES = [np.uint8, np.int16, np.uint16, np.float32]


def _cube(dtype, shape=(6, 5, 4)) -> np.ndarray:
    values = np.arange(np.prod(shape)).reshape(shape) % 120 + 1
    return values.astype(dtype)


# ------------------------------------------------------------------------------------------ ENVI


@pytest.mark.parametrize("dtype", COMMON_DTYPES)
@pytest.mark.parametrize("byte_order", [0, 1])
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_interleave_byte_order_dtype(tmp_path, envi_file, interleave, byte_order, dtype):
    data = _cube(dtype)
    hdr = envi_file(tmp_path / "c.hdr", data, interleave, byte_order, offset=16)
    cube = io.read_cube(hdr)
    assert isinstance(cube.data.base, np.memmap) or isinstance(cube.data, np.memmap)
    assert cube.shape == data.shape
    np.testing.assert_array_equal(cube.data, data)
    np.testing.assert_array_equal(cube.data[:, :, 2], data[:, :, 2])
    assert cube.metadata["interleave"] == interleave


@pytest.mark.parametrize(
    "dtype",
    [
        np.uint8,
        np.int16,
        np.int32,
        np.float32,
        np.float64,
        np.uint16,
        np.uint32,
        np.int64,
        np.uint64,
    ],
)  # ENVI data types 1, 2, 3, 4, 5, 12, 13, 14, 15
def test_envi_every_real_data_type(tmp_path, envi_file, dtype):
    data = _cube(dtype)
    cube = io.read_cube(envi_file(tmp_path / "c.hdr", data, "bil", 1))
    assert cube.data.dtype.newbyteorder("=") == dtype
    np.testing.assert_array_equal(cube.data, data)


def test_envi_complex_is_refused(tmp_path, envi_file):
    hdr = envi_file(tmp_path / "c.hdr", _cube(np.complex64))
    with pytest.raises(InputError, match="complex"):
        io.read_cube(hdr)


@pytest.mark.parametrize("data_ext", [".img", ".dat", ".raw", ".bsq", ""])
def test_envi_data_file_dropped_alone_finds_its_header(tmp_path, envi_file, data_ext):
    data = _cube(np.uint16)
    envi_file(tmp_path / "scene.hdr", data, data_ext=data_ext)
    data_path = tmp_path / f"scene{data_ext}"
    assert io.detect_format(data_path) == "envi"
    np.testing.assert_array_equal(io.read_cube(data_path).data, data)
    np.testing.assert_array_equal(io.read_cube(tmp_path / "scene.hdr").data, data)


def test_envi_header_named_after_data_file(tmp_path, envi_file):
    data = _cube(np.uint8)
    hdr = envi_file(tmp_path / "scene.hdr", data)
    hdr.rename(tmp_path / "scene.img.hdr")
    np.testing.assert_array_equal(io.read_cube(tmp_path / "scene.img").data, data)


def test_envi_metadata(tmp_path, envi_file):
    data = _cube(np.uint16, (4, 3, 5))
    data[0, 0, :] = 0
    extra = (
        "wavelength units = Micrometers\nwavelength = {0.45, 0.55, 0.65, 0.75, 0.85}\n"
        "fwhm = {0.01, 0.01, 0.01, 0.02, 0.02}\nband names = {a, b, c, d, e}\n"
        "default bands = {3, 2, 1}\nreflectance scale factor = 10000\ndata ignore value = 0\n"
    )
    cube = io.read_cube(envi_file(tmp_path / "m.hdr", data, extra=extra))
    np.testing.assert_allclose(cube.wavelengths, [0.45, 0.55, 0.65, 0.75, 0.85])
    np.testing.assert_allclose(cube.wavelengths_nm(), [450, 550, 650, 750, 850])
    assert cube.wavelength_units == "Micrometers"
    np.testing.assert_allclose(cube.metadata["fwhm"], [0.01, 0.01, 0.01, 0.02, 0.02])
    assert cube.metadata["band_names"] == ["a", "b", "c", "d", "e"]
    assert cube.metadata["default_bands"] == [2, 1, 0]
    assert cube.metadata["reflectance_scale_factor"] == 10000
    assert cube.ignore_value == 0
    mask = cube.valid_mask()
    assert mask.shape == (4, 3) and not mask[0, 0] and mask.sum() == 11


def test_envi_real_fenix_scan(shared_data):
    cube = io.read_cube(shared_data / "envi_fenix" / "image.hdr")
    assert cube.shape == (38, 23, 450) and cube.data.dtype == np.uint16
    assert cube.wavelengths[0] == pytest.approx(378.19) and cube.wavelengths[-1] > 2500
    assert cube.metadata["default_bands"] == [286, 261, 243]
    assert cube.metadata["reflectance_scale_factor"] == 65535
    assert cube.ignore_value == 0 and len(cube.metadata["fwhm"]) == 450
    same = io.read_cube(shared_data / "envi_fenix" / "image.dat")
    np.testing.assert_array_equal(same.data[:, :, 100], cube.data[:, :, 100])


def _truncate(hdr):
    data = hdr.with_suffix(".img")
    data.write_bytes(data.read_bytes()[:-10])


def _grow(hdr):
    with open(hdr.with_suffix(".img"), "ab") as f:
        f.write(b"\0" * 64)


def _drop_data(hdr):
    hdr.with_suffix(".img").unlink()


def _bad_type(hdr):
    hdr.write_text(hdr.read_text().replace("data type = 12", "data type = 7"))


def _bad_interleave(hdr):
    hdr.write_text(hdr.read_text().replace("interleave = bsq", "interleave = xyz"))


def _no_bands(hdr):
    hdr.write_text(hdr.read_text().replace("bands = 4\n", ""))


def _no_byte_order(hdr):
    hdr.write_text(hdr.read_text().replace("byte order = 0\n", ""))


def _library(hdr):
    hdr.write_text(hdr.read_text().replace("ENVI Standard", "ENVI Spectral Library"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "too short"),
        (_grow, "do not match"),
        (_drop_data, "no ENVI data file"),
        (_bad_type, "unknown ENVI data type '7'"),
        (_bad_interleave, "unknown interleave"),
        (_no_bands, "lacks bands"),
        (_no_byte_order, "lacks byte order"),
        (_library, "spectral library"),
    ],
)
def test_envi_bad_files_name_the_problem(tmp_path, envi_file, damage, message):
    hdr = envi_file(tmp_path / "bad.hdr", _cube(np.uint16))
    damage(hdr)
    with pytest.raises(InputError, match=message) as err:
        io.read_cube(hdr)
    assert "bad." in str(err.value)


def test_not_envi_header_and_orphan_data_file(tmp_path):
    (tmp_path / "photo.hdr").write_text("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n")
    assert io.detect_format(tmp_path / "photo.hdr") is None
    with pytest.raises(InputError, match="not a supported"):
        io.read_cube(tmp_path / "photo.hdr")
    (tmp_path / "orphan.img").write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="no ENVI header"):
        io.read_cube(tmp_path / "orphan.img")


# ---------------------------------------------------------------------------------------- MATLAB


def test_mat_v5_cube_and_labels(tmp_path):
    cube = _cube(np.float32, (8, 6, 5))
    gt = (np.arange(48).reshape(8, 6) % 4).astype(np.uint8)
    path = tmp_path / "scene.mat"
    sio.savemat(path, {"scene": cube, "scene_gt": gt, "small": cube[:2, :2, :2]})
    c = io.read_cube(path)
    assert c.metadata["key"] == "scene" and c.metadata["other_variables"] == ["small"]
    np.testing.assert_array_equal(c.data, cube)
    np.testing.assert_array_equal(io.read_cube(path, key="small").data, cube[:2, :2, :2])
    labels = io.read_labels(path)
    assert labels.metadata["key"] == "scene_gt"
    np.testing.assert_array_equal(labels.data, gt)
    c2, l2 = io.load_input(path)
    assert c2.shape == (8, 6, 5) and l2 is not None and l2.data.shape == (8, 6)


@pytest.mark.parametrize("lazy", [False, True])
def test_mat_v73_cube_in_matlab_order(tmp_path, mat73_file, monkeypatch, lazy):
    cube = _cube(np.float32, (9, 7, 5))  # non-square: a wrong transpose shows
    gt = (np.arange(63).reshape(9, 7) % 3).astype(np.uint8)
    path = mat73_file(tmp_path / "v73.mat", cube=cube, gt=gt)
    if lazy:
        monkeypatch.setattr(_mat, "LAZY_BYTES", 0)
    c = io.read_cube(path)
    assert isinstance(c.data, io.LazyArray) == lazy
    assert c.shape == (9, 7, 5) and c.metadata["format"] == "mat-v7.3"
    np.testing.assert_array_equal(np.asarray(c.data), cube)
    np.testing.assert_array_equal(c.data[2:5, :, 3], cube[2:5, :, 3])
    np.testing.assert_array_equal(io.band_first(c.data)[4], cube[:, :, 4])
    np.testing.assert_array_equal(io.read_labels(path).data, gt)


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_mat_unmixing_layout_bands_by_pixels(tmp_path, mat73_file, version):
    n_row, n_col, bands = 4, 3, 6
    cube = _cube(np.float64, (n_row, n_col, bands))
    y = cube.reshape(n_row * n_col, bands, order="F").T  # MATLAB: Y(:, r + c*nRow)
    path = tmp_path / "unmix.mat"
    scalars = {"nRow": np.array([[n_row]], float), "nCol": np.array([[n_col]], float)}
    if version == "v5":
        sio.savemat(path, {"Y": y, **scalars})
    else:
        mat73_file(path, Y=y, **scalars)
    c = io.read_cube(path)
    assert "column-major" in c.metadata["layout"]
    np.testing.assert_array_equal(c.data, cube)


def test_mat_unmixing_size_mismatch(tmp_path):
    sio.savemat(tmp_path / "u.mat", {"Y": np.ones((5, 10)), "nRow": 3, "nCol": 3})
    with pytest.raises(InputError, match="nRow x nCol"):
        io.read_cube(tmp_path / "u.mat")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({}, "holds no variables"),
        ({"v": np.arange(10.0)}, "no hyperspectral cube.*v 1x10 double"),
        ({"name": "hello"}, "no hyperspectral cube"),
    ],
)
def test_mat_without_a_cube(tmp_path, content, message):
    path = tmp_path / "nothing.mat"
    sio.savemat(path, content)
    with pytest.raises(InputError, match=message) as err:
        io.read_cube(path)
    assert "nothing.mat" in str(err.value)


def test_mat_bad_key_lists_variables(tmp_path):
    sio.savemat(tmp_path / "k.mat", {"a": np.ones((3, 3, 3))})
    with pytest.raises(InputError, match="no variable 'b'; variables: a 3x3x3 double"):
        io.read_cube(tmp_path / "k.mat", key="b")
    with pytest.raises(InputError, match="not a label map"):
        io.read_labels(tmp_path / "k.mat", key="a")


def test_mat_labels_pick_and_others(tmp_path):
    gt = np.zeros((5, 6), np.uint8)
    gt[1:3, 1:4] = 2
    sio.savemat(tmp_path / "two.mat", {"train": gt, "test": (gt > 0).astype(np.uint8) * 1})
    labels = io.read_labels(tmp_path / "two.mat")
    assert labels.metadata["other_variables"]
    assert labels.data.dtype.kind == "u"


@pytest.mark.parametrize(
    ("rel", "shape", "classes", "labelled"),
    [
        ("indian_pines/Indian_pines_gt.mat", (145, 145), 16, 10249),
        ("mat_v73/Indian_pines_gt.mat", (145, 145), 16, 10249),
        ("mat_v73/KSC_gt.mat", (512, 614), 13, 5211),
        ("pavia_university/PaviaU_gt.mat", (610, 340), 9, 42776),
        ("pavia_university/TRpavia_fixed.mat", (610, 340), 9, 3921),
        ("pavia_university/TSpavia_fixed.mat", (610, 340), 9, 40002),
    ],
)
def test_real_label_maps(shared_data, rel, shape, classes, labelled):
    labels = io.read_labels(shared_data / rel)
    assert labels.data.shape == shape
    assert labels.n_classes == classes
    assert int((labels.data > 0).sum()) == labelled
    info = io.describe(shared_data / rel)
    assert info["kind"] == "labels" and info["labelled_pixels"] == labelled


def test_real_v73_equals_v5(shared_data):
    v5 = io.read_labels(shared_data / "indian_pines" / "Indian_pines_gt.mat")
    v73 = io.read_labels(shared_data / "mat_v73" / "Indian_pines_gt.mat")
    np.testing.assert_array_equal(v5.data, v73.data)


def test_real_pavia_split_is_disjoint(shared_data):
    d = shared_data / "pavia_university"
    gt = io.read_labels(d / "PaviaU_gt.mat").data
    tr = io.read_labels(d / "TRpavia_fixed.mat").data
    ts = io.read_labels(d / "TSpavia_fixed.mat").data
    assert not ((tr > 0) & (ts > 0)).any()
    split = np.maximum(tr, ts)
    # The fixed split covers every ground-truth pixel with the same class (and 1147 pixels more).
    np.testing.assert_array_equal(split[gt > 0], gt[gt > 0])
    assert int(((split > 0) & (gt == 0)).sum()) == 1147


# ----------------------------------------------------------------------------------- npy and TIFF


def test_npy_cube_is_memory_mapped(tmp_path):
    data = _cube(np.float32, (6, 5, 4))
    np.save(tmp_path / "c.npy", data)
    cube = io.read_cube(tmp_path / "c.npy")
    assert isinstance(cube.data, np.memmap)
    np.testing.assert_array_equal(cube.data, data)


def test_npy_band_first_stack(tmp_path):
    data = _cube(np.uint16, (3, 9, 8))
    np.save(tmp_path / "b.npy", data)
    np.testing.assert_array_equal(io.read_cube(tmp_path / "b.npy").data, np.moveaxis(data, 0, 2))


def test_npy_labels_and_1d(tmp_path):
    gt = np.array([[0, 1, 2], [2, 2, 0]], np.int32)
    np.save(tmp_path / "gt.npy", gt)
    np.testing.assert_array_equal(io.read_labels(tmp_path / "gt.npy").data, gt)
    np.save(tmp_path / "v.npy", np.arange(5.0))
    with pytest.raises(InputError, match=r"3-D array.*\(5,\)"):
        io.read_cube(tmp_path / "v.npy")
    with pytest.raises(InputError, match="2-D"):
        io.read_labels(tmp_path / "v.npy")


def test_npy_truncated(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((10, 10, 10)))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.npy: cannot map .*truncated"):
        io.read_cube(tmp_path / "t.npy")


@pytest.mark.parametrize("planar", [False, True])
def test_tiff_multiband(tmp_path, planar):
    data = _cube(np.uint16, (12, 10, 7))
    stored = np.moveaxis(data, 2, 0) if planar else data
    tifffile.imwrite(tmp_path / "c.tif", stored, photometric="minisblack",
                     planarconfig="separate" if planar else "contig")  # fmt: skip
    cube = io.read_cube(tmp_path / "c.tif")
    np.testing.assert_array_equal(cube.data, data)


def test_nan_and_inf_are_invalid_pixels(tmp_path):
    data = _cube(np.float32, (4, 4, 3))
    data[0, 1, 2] = np.nan
    data[3, 3, 0] = np.inf
    np.save(tmp_path / "n.npy", data)
    mask = io.read_cube(tmp_path / "n.npy").valid_mask()
    assert mask.sum() == 14 and not mask[0, 1] and not mask[3, 3]
    np.save(tmp_path / "nl.npy", np.array([[1.0, np.nan], [2.0, 0.0]]))
    with pytest.raises(InputError, match="non-integer"):
        io.read_labels(tmp_path / "nl.npy")


# -------------------------------------------------------------------------- paths, describe, input


def test_directory_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        io.read_cube(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        io.read_cube(tmp_path / "absent.hdr")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a supported file"):
        io.read_labels(tmp_path / "notes.txt")


def test_key_only_for_mat(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((2, 2, 2)))
    with pytest.raises(InputError, match=r"only applies to \.mat"):
        io.read_cube(tmp_path / "c.npy", key="x")


def test_describe_envi_and_mat(tmp_path, envi_file):
    hdr = envi_file(tmp_path / "d.hdr", _cube(np.uint16), extra="wavelength = {1,2,3,4}\n")
    info = io.describe(hdr)
    assert info["shape"] == [6, 5, 4] and info["bands"] == 4 and info["dtype"] == "uint16"
    assert info["wavelength_range"] == [1.0, 4.0] and info["format"] == "envi"
    sio.savemat(
        tmp_path / "m.mat", {"cube": _cube(np.float32), "gt": np.eye(6, 5, dtype=np.uint8)}
    )
    info = io.describe(tmp_path / "m.mat")
    assert info["key"] == "cube" and len(info["variables"]) == 2
    assert info["labels"]["key"] == "gt"


@pytest.mark.parametrize(
    ("spec", "shape", "classes"),
    [
        ("sample:synthetic", (64, 64, 50), 5),
        ("sample:synthetic?size=16&bands=8&classes=3&seed=4", (16, 16, 8), 3),
        ("sample:synthetic?height=10&width=12&bands=6&noise=0", (10, 12, 6), 5),
    ],
)
def test_load_input_synthetic(spec, shape, classes):
    cube, labels = io.load_input(spec)
    assert cube.shape == shape and labels.n_classes == classes
    assert io.describe(spec)["shape"] == list(shape)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sample:synthetic?colour=3", "unknown parameter 'colour'"),
        ("sample:synthetic?bands=x", "bands='x' is not a int"),
        ("sample:synthetic?bands=1", "bands must be at least 3"),
        ("sample:salinas", "unknown sample"),
    ],
)
def test_load_input_bad_specs(spec, message):
    with pytest.raises(InputError, match=message):
        io.load_input(spec)


# ------------------------------------------------------------------------------------ LazyArray


@pytest.mark.parametrize(
    "key",
    [
        np.s_[...],
        np.s_[1],
        np.s_[:, 2],
        np.s_[1:3, :, -1],
        np.s_[::2, 1:, ::-1],
        np.s_[[0, 2], :, 1],
        np.s_[..., 0],
        np.s_[-1, -2, -3],
    ],
)
def test_lazy_array_indexing_matches_numpy(tmp_path, key):
    import h5py

    base = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["x"] = base
    with h5py.File(tmp_path / "l.h5", "r") as f:
        lazy = io.LazyArray(f["x"])  # MATLAB order = reversed axes
        np.testing.assert_array_equal(lazy[key], base.T[key])
        perm = lazy.transpose(2, 0, 1)
        np.testing.assert_array_equal(perm[key], base.T.transpose(2, 0, 1)[key])
        assert perm.shape == (4, 6, 5)
