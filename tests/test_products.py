"""Sensor products, each written here in its published layout (no real product file is small
enough to ship): EnMAP L2A GeoTIFF and folder, DESIS folder, EMIT netCDF, PRISMA L2D HDF-EOS5,
NEON AOP HDF5; bad bands; and train + predict on them through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pyproj
import pytest
import tifffile

from napari_mtmsd.io import Georef, describe, read_cube, read_labels
from napari_mtmsd.io._georef import crs_wkt, orthorectify
from napari_mtmsd.io._geotiff import georef_tags

UTM33 = Georef(transform=(399960.0, 30.0, 0.0, 5800020.0, 0.0, -30.0), crs=crs_wkt(32633))
ENMAP_WL = np.linspace(418.2, 2445.5, 224)
WATER = np.arange(130, 136)  # six all-no-data water-vapour bands


def enmap_cube(h: int = 6, w: int = 5) -> np.ndarray:
    cube = np.random.default_rng(0).uniform(0, 0.6, (h, w, 224)).astype(np.float32)
    cube[:, :, WATER] = -32768
    cube[0, 0] = -32768  # outside the swath
    return cube


def write_enmap_tif(path: Path, cube: np.ndarray, band_metadata: bool = True) -> Path:
    """EnMAP L2A SPECTRAL_IMAGE GeoTIFF: band-interleaved, GDAL_NODATA, UTM GeoKeys, per-band
    ``wavelength``/``fwhm`` GDAL metadata (as GDAL writes band items)."""
    items = "".join(
        f'<Item name="wavelength" sample="{i}">{w:.3f}</Item><Item name="fwhm" sample="{i}">'
        f'{7 + i / 50:.3f}</Item><Item name="wavelength_units" sample="{i}">Nanometers</Item>'
        for i, w in enumerate(ENMAP_WL)
    )
    tags = [*georef_tags(UTM33), (42113, "s", 0, "-32768", True)]
    if band_metadata:
        tags.append((42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True))
    tifffile.imwrite(path, np.moveaxis(cube, 2, 0), photometric="minisblack",
                     planarconfig="separate", extratags=tags, metadata=None)  # fmt: skip
    return path


def test_enmap_geotiff_wavelengths_nodata_and_empty_bands(tmp_path):
    c = read_cube(write_enmap_tif(tmp_path / "enmap.tif", enmap_cube()))
    assert c.n_bands == 224 and np.allclose(c.wavelengths, ENMAP_WL, atol=1e-3)
    assert c.wavelength_units == "Nanometers" and c.metadata["fwhm"][1] == pytest.approx(7.02)
    assert c.ignore_value == -32768 and c.georef == UTM33
    good = c.good_bands()
    assert good.sum() == 218 and not good[WATER].any()
    valid = c.valid_mask()
    assert not valid[0, 0] and valid.sum() == 29  # only the no-data pixel, not every pixel
    info = describe(tmp_path / "enmap.tif")
    assert (
        info["bad_bands"] == "none declared; 6 with no valid value [130, 131, 132, 133, 134, 135]"
    )
    assert info["crs"].startswith("EPSG:32633") and info["pixel_size"] == [30.0, 30.0]


def test_enmap_and_desis_folders_read_band_characterisation(tmp_path):
    enmap = tmp_path / "ENMAP01-____L2A-DT0000001280_20220609T081229Z_001_V010111_20230101T000000Z"
    enmap.mkdir()
    stem = enmap.name
    write_enmap_tif(enmap / f"{stem}-SPECTRAL_IMAGE.TIF", enmap_cube(), band_metadata=False)
    bands = "".join(
        f'<bandID number="{i + 1}"><wavelengthCenterOfBand>{w:.3f}</wavelengthCenterOfBand>'
        f"<FWHMOfBand>7.5</FWHMOfBand><GainOfBand>0.0001</GainOfBand>"
        f"<OffsetOfBand>0</OffsetOfBand></bandID>"
        for i, w in enumerate(ENMAP_WL)
    )
    (enmap / f"{stem}-METADATA.XML").write_text(
        f"<level_X><specific><bandCharacterisation>{bands}</bandCharacterisation>"
        "</specific></level_X>"
    )
    c = read_cube(enmap)
    assert c.metadata["sensor"] == "EnMAP" and c.wavelength_units == "nm"
    assert np.allclose(c.wavelengths, ENMAP_WL, atol=1e-3) and c.metadata["gain"][0] == 1e-4
    assert c.georef == UTM33 and c.ignore_value == -32768

    desis = tmp_path / "DESIS-HSI-L2A-DT0483531728_001-20200823T143117-V0210"
    desis.mkdir()
    cube = np.random.default_rng(1).integers(0, 10000, (4, 3, 235)).astype(np.int16)
    tifffile.imwrite(desis / f"{desis.name}-SPECTRAL_IMAGE.tif", np.moveaxis(cube, 2, 0),
                     photometric="minisblack", planarconfig="separate",
                     extratags=georef_tags(UTM33), metadata=None)  # fmt: skip
    bands = "".join(
        f"<band><bandNumber>{i + 1}</bandNumber><wavelengthCenterOfBand>{401.8 + 2.55 * i:.2f}"
        f"</wavelengthCenterOfBand><wavelengthWidthOfBand>3.5</wavelengthWidthOfBand>"
        f"<gainOfBand>0.0001</gainOfBand><offsetOfBand>0</offsetOfBand></band>"
        for i in range(235)
    )
    (desis / f"{desis.name}-METADATA.xml").write_text(
        f"<hsi_doc><specific><bandCharacterisation>{bands}</bandCharacterisation></specific>"
        "</hsi_doc>"
    )
    d = read_cube(desis)
    assert d.metadata["sensor"] == "DESIS" and d.wavelengths[1] == pytest.approx(404.35)
    assert d.metadata["fwhm"][0] == 3.5 and d.georef == UTM33


def write_emit(path: Path, swath: np.ndarray, good: np.ndarray | None = None) -> Georef:
    """EMIT L2A RFL netCDF (HDF5) layout: root ``reflectance`` (downtrack, crosstrack, bands),
    ``sensor_band_parameters``, ``location`` with a 1-based GLT, root ``geotransform`` and
    ``spatial_ref``. The GLT grid is the swath turned by a quarter plus a blank border."""
    h, w, b = swath.shape
    gh, gw = w + 2, h + 2
    glt_x, glt_y = np.zeros((gh, gw), np.int32), np.zeros((gh, gw), np.int32)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    glt_x[cols + 1, rows + 1], glt_y[cols + 1, rows + 1] = cols + 1, rows + 1
    gt = (-118.5, 0.000542232520256, 0.0, 34.2, 0.0, -0.000542232520256)
    wkt = pyproj.CRS(4326).to_wkt("WKT1_GDAL")
    with h5py.File(path, "w") as f:
        f.attrs["geotransform"] = np.asarray(gt)
        f.attrs["spatial_ref"] = wkt
        ds = f.create_dataset("reflectance", data=swath.astype(np.float32))
        ds.attrs["_FillValue"] = np.float32(-9999)
        sbp = f.create_group("sensor_band_parameters")
        sbp["wavelengths"] = np.linspace(381, 2493, b).astype(np.float32)
        sbp["fwhm"] = np.full(b, 8.5, np.float32)
        sbp["good_wavelengths"] = np.ones(b, np.uint8) if good is None else good.astype(np.uint8)
        loc = f.create_group("location")
        loc["glt_x"], loc["glt_y"] = glt_x, glt_y
        loc["lat"], loc["lon"] = np.zeros((h, w)), np.zeros((h, w))
    return Georef(transform=gt, crs=wkt, glt=np.stack([glt_y, glt_x]))


def test_emit_netcdf_is_a_lazy_swath_with_glt_and_bad_bands(tmp_path):
    swath = np.random.default_rng(2).uniform(0, 0.5, (5, 4, 10))
    swath[:, :, [3, 4]] = np.nan  # bad bands hold nothing usable
    swath[2, 1] = -9999
    good = np.ones(10, bool)
    good[[3, 4]] = False
    expected = write_emit(tmp_path / "EMIT_L2A_RFL_001_20230101T000000_2300101_001.nc", swath,
                          good)  # fmt: skip
    c = read_cube(tmp_path / "EMIT_L2A_RFL_001_20230101T000000_2300101_001.nc")
    assert type(c.data).__name__ == "LazyArray" and c.shape == (5, 4, 10)
    assert c.metadata["sensor"] == "EMIT" and c.wavelengths[0] == 381 and c.ignore_value == -9999
    assert c.bad_bands.tolist() == (~good).tolist() and c.georef == expected
    valid = c.valid_mask()
    assert valid.sum() == 19 and not valid[2, 1]  # NaN bad bands void nothing
    assert describe(tmp_path / "EMIT_L2A_RFL_001_20230101T000000_2300101_001.nc")[
        "bad_bands"] == "2 declared [3, 4]"  # fmt: skip


def write_prisma(path: Path, h: int = 4, w: int = 3, centres: bool = False) -> np.ndarray:
    """PRISMA L2D HDF-EOS5: ``VNIR_Cube``/``SWIR_Cube`` (rows, bands, cols) uint16, VNIR in
    descending wavelength with unused (0 nm) bands, ``L2Scale*`` min/max, EPSG and corners."""
    rng = np.random.default_rng(3)
    cw_v = np.r_[0.0, np.linspace(980, 400, 5)]  # descending, one unused band
    cw_s = np.r_[np.linspace(920, 2500, 4), 0.0]
    with h5py.File(path, "w") as f:
        grp = f.create_group("HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields")
        grp["VNIR_Cube"] = rng.integers(0, 65535, (h, 6, w), dtype=np.uint16)
        grp["SWIR_Cube"] = rng.integers(0, 65535, (h, 5, w), dtype=np.uint16)
        f.attrs.update({"List_Cw_Vnir": cw_v, "List_Fwhm_Vnir": np.full(6, 10.0),
                        "List_Cw_Swir": cw_s, "List_Fwhm_Swir": np.full(5, 12.0),
                        "L2ScaleVnirMin": 0.0, "L2ScaleVnirMax": 1.0,
                        "L2ScaleSwirMin": 0.0, "L2ScaleSwirMax": 0.5, "Epsg_Code": 32632})  # fmt: skip
        off = 15.0 if centres else 0.0
        f.attrs.update({"Product_ULcorner_easting": 600000.0 + off,
                        "Product_ULcorner_northing": 5000000.0 - off,
                        "Product_LRcorner_easting": 600000.0 + 30 * w - off,
                        "Product_LRcorner_northing": 5000000.0 - 30 * h + off})  # fmt: skip
        return grp["VNIR_Cube"][()]


@pytest.mark.parametrize("centres", [False, True])
def test_prisma_l2d_merges_detectors_in_wavelength_order(tmp_path, centres):
    vnir = write_prisma(tmp_path / "PRS_L2D_STD_20200101.he5", centres=centres)
    c = read_cube(tmp_path / "PRS_L2D_STD_20200101.he5")
    assert c.n_bands == 9 and np.all(np.diff(c.wavelengths) >= 0) and c.wavelengths[0] == 400
    assert np.allclose(c.data[:, :, 0], vnir[:, 5, :] / 65535.0, atol=1e-6)  # 400 nm, rescaled
    assert c.georef.transform == (600000.0, 30.0, 0.0, 5000000.0, 0.0, -30.0)
    assert c.georef.epsg() == 32632 and c.metadata["sensor"] == "PRISMA"


NEON_NAME = "NEON_D16_ABBY_DP3_552000_5069000_reflectance.h5"


def write_neon(path: Path, h: int = 5, w: int = 4, b: int = 12) -> np.ndarray:
    """NEON AOP reflectance HDF5: int16 ``Reflectance_Data`` with scale and ignore value, band
    windows, wavelengths, ``Map_Info`` and ``EPSG Code``; returns the wavelengths."""
    wl = np.linspace(383, 2512, b)
    data = np.random.default_rng(4).integers(0, 6000, (h, w, b)).astype(np.int16)
    data[0, 0] = -9999
    with h5py.File(path, "w") as f:
        refl = f.create_group("ABBY/Reflectance")
        ds = refl.create_dataset("Reflectance_Data", data=data)
        ds.attrs.update({"Scale_Factor": 10000.0, "Data_Ignore_Value": -9999.0})
        refl.attrs.update({"Band_Window_1_Nanometers": [1340, 1445],
                           "Band_Window_2_Nanometers": [1790, 1955]})  # fmt: skip
        refl["Metadata/Spectral_Data/Wavelength"] = wl
        refl["Metadata/Spectral_Data/FWHM"] = np.full(b, 5.0)
        cs = refl.create_group("Metadata/Coordinate_System")
        cs["Map_Info"] = np.bytes_("UTM,  1.000,  1.000,  552000.00,  5070000.00,  1.0000000e+00,"
                                   "  1.0000000e+00,  10,  North,  WGS-84,  units=Meters, 0")  # fmt: skip
        cs["EPSG Code"] = np.bytes_("32610")
        cs["Proj4"] = np.bytes_("+proj=UTM +zone=10 +ellps=WGS84 +datum=WGS84 +units=m")
    return wl


def test_neon_aop_reflectance(tmp_path):
    wl = write_neon(tmp_path / NEON_NAME)
    c = read_cube(tmp_path / NEON_NAME)
    assert c.metadata["reflectance_scale_factor"] == 10000 and c.ignore_value == -9999
    assert c.bad_bands.tolist() == [bool(1340 <= x <= 1445 or 1790 <= x <= 1955) for x in wl]
    assert c.georef.transform == (552000.0, 1.0, 0.0, 5070000.0, 0.0, -1.0)
    assert c.georef.epsg() == 32610 and not c.valid_mask()[0, 0]


def test_bad_bands_are_left_out_of_the_pca_and_recorded(tmp_path):
    from napari_mtmsd.preprocess import Preprocessor
    from napari_mtmsd.pretrain import pretrain
    from napari_mtmsd.samples import synthetic_scene

    base, _ = synthetic_scene(height=16, width=16, bands=12, n_classes=3, seed=0)
    data = np.asarray(base.data, np.float32).copy()
    data[:, :, 5] = np.nan  # a band that is empty everywhere
    from napari_mtmsd.io import Cube

    cube = Cube(data=data, name="scene", bad_bands=np.eye(12, dtype=bool)[0])
    assert cube.valid_mask().all() and cube.good_bands().sum() == 10
    pre = Preprocessor.fit(cube, 4)
    assert pre.bad_bands == [0, 5] and np.isfinite(pre.transform(data)).all()
    assert Preprocessor.from_arrays(pre.to_arrays()).bad_bands == [0, 5]
    model = pretrain(cube, preset="tiny", steps=2, device="cpu", seed=0)
    assert model.full_config()["bad_bands"] == [0, 5]
    assert np.isfinite(model.prepare(cube)).all()


def test_train_and_predict_keep_the_georeferencing(tmp_path, envi_file, capsys):
    """An AVIRIS-NG-layout ENVI cube with a rotated map info, and an EMIT swath with the same
    bands: the class maps written as GeoTIFF and ENVI carry the input's grid."""
    from napari_mtmsd.cli import main
    from napari_mtmsd.io import LabelMap, write_labels
    from napari_mtmsd.samples import synthetic_scene

    cube, gt = synthetic_scene(height=20, width=16, bands=10, n_classes=3, seed=5)
    data = np.asarray(cube.data, np.float32)
    extra = ("map info = {UTM, 1, 1, 724522.127, 4074620.759, 5.1, 5.1, 11, North, WGS-84, "
             "units=Meters, rotation=75}\ndata ignore value = -9999\n")  # fmt: skip
    hdr = envi_file(tmp_path / "ang_rfl", data, interleave="bil", extra=extra)
    georef = read_cube(hdr).georef
    labels = np.where(np.random.default_rng(0).random(gt.data.shape) < 0.3, gt.data, 0)
    lab = write_labels(tmp_path / "train.tif", LabelMap(labels, georef=georef))
    emit = tmp_path / "EMIT_L2A_RFL.nc"
    glt = write_emit(emit, data)
    model, clf, out = tmp_path / "model", tmp_path / "clf", tmp_path / "maps"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    feat = ["--timesteps", "100", "--stages", "0,1"]
    assert main(["pretrain", str(hdr), "-o", str(model), "--preset", "tiny", "--steps", "3",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert main(["train", str(hdr), "--labels", str(lab), "--model", str(model), "-o", str(clf),
                 "--n-models", "1", "--epochs", "2", *cache, *feat]) == 0  # fmt: skip
    for fmt in ("tif", "hdr"):
        assert main(["predict", str(hdr), str(emit), "--classifier", str(clf), "-o", str(out),
                     "--format", fmt, *cache]) == 0  # fmt: skip
        ang = read_labels(out / f"ang_rfl_classes.{fmt}")
        assert ang.data.shape == (20, 16) and ang.data.max() > 0
        assert np.allclose(ang.georef.transform, georef.transform, rtol=0, atol=1e-9)
        assert math.isclose(ang.georef.rotation, 75)
        ortho = read_labels(out / f"EMIT_L2A_RFL_classes.{fmt}")
        assert ortho.georef == Georef(glt.transform, glt.crs)
        assert ortho.data.shape == glt.glt.shape[1:]
        swath = orthorectify(np.ones((20, 16), np.uint8), glt.glt)
        assert ((ortho.data > 0) == (swath > 0)).all()  # classified exactly where the GLT lands
    printed = capsys.readouterr().out
    assert printed.count("note: .hdr does not keep") == 2 and "note: .tif" not in printed


@pytest.mark.parametrize("product", ["enmap", "prisma", "neon"])
def test_train_and_predict_on_products_keep_their_grid(tmp_path, product):
    """EnMAP GeoTIFF, PRISMA L2D and NEON AOP: pretrain, train (the few-label head at these few
    labels) and predict through the CLI; the class maps carry the product's grid."""
    from napari_mtmsd.cli import main
    from napari_mtmsd.io import LabelMap, write_labels

    h, w = 16, 12
    if product == "enmap":
        src = write_enmap_tif(tmp_path / "ENMAP01-L2A-SPECTRAL_IMAGE.TIF", enmap_cube(h, w))
    elif product == "prisma":
        src = tmp_path / "PRS_L2D_STD_20200101.he5"
        write_prisma(src, h, w)
    else:
        src = tmp_path / NEON_NAME
        write_neon(src, h, w)
    georef = read_cube(src).georef
    labels = np.zeros((h, w), np.uint8)
    labels[2:5, 1:3], labels[10:13, 8:11] = 1, 2
    lab = write_labels(tmp_path / "train.tif", LabelMap(labels, georef=georef))
    model, clf, out = tmp_path / "model", tmp_path / "clf", tmp_path / "maps"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["pretrain", str(src), "-o", str(model), "--preset", "tiny", "--steps", "2",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert main(["train", str(src), "--labels", str(lab), "--model", str(model), "-o", str(clf),
                 "--timesteps", "100", "--stages", "0,1", *cache]) == 0  # fmt: skip
    for fmt in ("tif", "hdr"):
        assert main(["predict", str(src), "--classifier", str(clf), "-o", str(out),
                     "--format", fmt, *cache]) == 0  # fmt: skip
        (written,) = out.glob(f"*_classes.{fmt}")
        got = read_labels(written)
        assert got.data.shape == (h, w) and set(np.unique(got.data)) <= {0, 1, 2}
        assert got.georef.epsg() == georef.epsg()
        assert np.allclose(got.georef.transform, georef.transform, rtol=0, atol=1e-9)


def test_train_refuses_labels_on_another_grid(tmp_path, envi_file, capsys):
    """A label map georeferenced on another grid than the cube is refused by name (exit 2);
    the same labels on the cube's grid train."""
    from napari_mtmsd.cli import main
    from napari_mtmsd.io import LabelMap, write_labels

    data = np.random.default_rng(1).uniform(0, 1, (12, 10, 6)).astype(np.float32)
    extra = "map info = {UTM, 1, 1, 600000, 5000000, 30, 30, 32, North, WGS-84, units=Meters}\n"
    hdr = envi_file(tmp_path / "scene", data, extra=extra)
    grid = read_cube(hdr).georef
    labels = np.zeros((12, 10), np.uint8)
    labels[1:3, 1:3], labels[8:10, 6:8] = 1, 2
    shifted = Georef((grid.transform[0] + 300.0, *grid.transform[1:]), grid.crs)
    wrong = write_labels(tmp_path / "wrong.tif", LabelMap(labels, georef=shifted))
    right = write_labels(tmp_path / "right.tif", LabelMap(labels, georef=grid))
    model = tmp_path / "model"
    assert main(["pretrain", str(hdr), "-o", str(model), "--preset", "tiny", "--steps", "2",
                 "--device", "cpu"]) == 0  # fmt: skip
    args = ["--model", str(model), "--timesteps", "100", "--stages", "0,1",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(["train", str(hdr), "--labels", str(wrong), "-o", str(tmp_path / "c1"), *args]) == 2
    assert "wrong.tif: the labels lie on another grid" in capsys.readouterr().err
    assert main(["train", str(hdr), "--labels", str(right), "-o", str(tmp_path / "c2"), *args]) == 0
