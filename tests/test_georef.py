"""Georeferencing: ENVI map info (pixel-corner convention, rotation), GeoTIFF tags, crops, GLTs,
napari transforms, and round trips through every writer."""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import tifffile

from napari_mtmsd.errors import InputError
from napari_mtmsd.io import (
    Cube,
    Georef,
    LabelMap,
    read_cube,
    read_labels,
    write_cube,
    write_labels,
    write_prediction,
)
from napari_mtmsd.io._georef import crs_wkt, from_envi, orthorectify, same_crs
from napari_mtmsd.io._other import tiff_geo

UTM11 = crs_wkt(32611)
NORTH_UP = Georef(transform=(552000.0, 5.0, 0.0, 4200000.0, 0.0, -5.0), crs=UTM11)


def rotated(deg: float, px: float = 5.1) -> Georef:
    r = math.radians(deg)
    c, s = math.cos(r) * px, math.sin(r) * px
    return Georef(transform=(724522.127, c, s, 4074620.759, s, -c), crs=UTM11)


def test_envi_map_info_reference_pixel_is_a_corner():
    corner = from_envi(["UTM", "1", "1", "1000", "2000", "10", "10", "11", "North", "WGS-84"])
    centre = from_envi(["UTM", "1.5", "1.5", "1005", "1995", "10", "10", "11", "North", "WGS-84"])
    assert corner.transform == centre.transform == (1000.0, 10.0, 0.0, 2000.0, 0.0, -10.0)
    assert corner.epsg() == 32611
    assert corner.pixel_centre(0, 0) == (1005.0, 1995.0)


def test_envi_rotation_turns_about_the_tie_point():
    g = from_envi(["UTM", "3", "2", "500", "800", "2", "2", "11", "North", "WGS-84",
                   "units=Meters", "rotation=30"])  # fmt: skip
    x0, a, b, y0, d, e = g.transform
    assert math.isclose(x0 + a * 2 + b * 1, 500) and math.isclose(y0 + d * 2 + e * 1, 800)
    assert math.isclose(g.rotation, 30) and np.allclose(g.pixel_size, (2, 2))
    # GDAL's convention for a (1, 1) tie point: gt = (E, cos r px, sin r px, N, sin r py, -cos r py)
    g1 = from_envi(["UTM", "1", "1", "500", "800", "2", "2", "11", "North", "rotation=30"])
    r = math.radians(30)
    assert np.allclose(g1.transform, (500, 2 * math.cos(r), 2 * math.sin(r), 800,
                                      2 * math.sin(r), -2 * math.cos(r)))  # fmt: skip


def test_envi_crs_from_coordinate_system_string_and_geographic():
    css = pyproj.CRS(UTM11).to_wkt("WKT1_ESRI")
    g = from_envi(["Arbitrary", "1", "1", "0", "0", "1", "1"], css.split(","))
    assert g.epsg() == 32611
    geo = from_envi(["Geographic Lat/Lon", "1", "1", "-120", "40", "0.1", "0.1", "WGS-84"])
    assert geo.epsg() == 4326
    with pytest.raises(InputError, match="map info"):
        from_envi(["UTM", "1", "1", "x", "0", "1", "1"])


def test_aviris_ng_layout_with_rotation_reads_and_round_trips(tmp_path, envi_file):
    cube = np.random.default_rng(0).normal(size=(6, 5, 12)).astype(np.float32)
    cube[0, 0] = -9999
    extra = ("map info = { UTM , 1.000 , 1.000 , 724522.127 , 4074620.759 , 5.1000000000e+00 , "
             "5.1000000000e+00 , 11 , North , WGS-84 , units=Meters , rotation=75.00000000 }\n"
             "data ignore value = -9999\n"
             "wavelength = {" + ", ".join(f"{377 + 5 * i:.2f}" for i in range(12)) + "}\n")  # fmt: skip
    hdr = envi_file(tmp_path / "ang20200712t194627_rfl", cube, interleave="bil", extra=extra)
    c = read_cube(hdr)
    assert c.ignore_value == -9999 and c.wavelengths[0] == 377
    assert math.isclose(c.georef.rotation, 75) and c.georef.epsg() == 32611
    assert not c.valid_mask()[0, 0] and c.valid_mask().sum() == 29
    out = write_labels(tmp_path / "classes.hdr", LabelMap(np.ones((6, 5), np.uint8),
                                                          georef=c.georef))  # fmt: skip
    back = read_labels(out).georef
    assert np.allclose(back.transform, c.georef.transform, rtol=0, atol=1e-9)
    assert same_crs(back.crs, c.georef.crs)


def test_envi_round_trip_is_exact_north_up(tmp_path):
    cube = Cube(np.zeros((4, 3, 2), np.float32), georef=NORTH_UP, bad_bands=[True, False])
    back = read_cube(write_cube(tmp_path / "c.hdr", cube))
    assert back.georef == NORTH_UP and back.bad_bands.tolist() == [True, False]
    lab = read_labels(write_labels(tmp_path / "l.hdr", LabelMap(np.eye(3, dtype=np.uint8),
                                                                 georef=NORTH_UP)))  # fmt: skip
    assert lab.georef == NORTH_UP


def test_geotiff_class_map_carries_everything(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    colors = np.array([[0, 0, 0], [10, 20, 30], [200, 100, 50]], np.uint8)
    path = write_labels(tmp_path / "c.tif", LabelMap(labels, ["water", "forest"], colors,
                                                     georef=NORTH_UP))  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert page.tags[42113].value == "0"
        assert (page.colormap[:, 2] // 257).tolist() == [200, 100, 50]
        xml = page.tags[42112].value
        assert '<Item name="class_names" domain="ENVI">{Unclassified, water, forest}</Item>' in xml
        assert '<Item name="file_type" domain="ENVI">ENVI Classification</Item>' in xml
        assert tif.geotiff_metadata["ProjectedCSTypeGeoKey"] == 32611
    back = read_labels(path)
    assert back.georef == NORTH_UP and back.class_names == ["water", "forest"]
    assert back.georef.transform == NORTH_UP.transform  # bit-exact doubles


@pytest.mark.parametrize("georef", [rotated(75), Georef(
    transform=(10.0, 0.5, 0.0, 20.0, 0.0, -0.25),
    crs="+proj=tmerc +lat_0=0 +lon_0=9 +k=0.9996 +x_0=500000 +y_0=0 +ellps=intl +units=m"),
    Georef(transform=(-120.0, 0.01, 0.0, 40.0, 0.0, -0.01), crs=crs_wkt(4326))])  # fmt: skip
def test_geotiff_round_trip_rotation_custom_crs_geographic(tmp_path, georef):
    path = write_labels(tmp_path / "c.tif", LabelMap(np.ones((3, 4), np.uint8), georef=georef))
    assert read_labels(path).georef == georef


def test_pixel_is_point_is_shifted_to_corners(tmp_path):
    tags = [(33550, "d", 3, (2.0, 2.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 100.0, 50.0, 0), True),
            (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 3072, 0, 1, 32611), True)]  # fmt: skip
    tifffile.imwrite(tmp_path / "p.tif", np.ones((3, 3), np.uint8), extratags=tags)
    g = read_labels(tmp_path / "p.tif").georef
    assert g.transform == (99.0, 2.0, 0.0, 51.0, 0.0, -2.0) and g.epsg() == 32611


def test_crop_keeps_pixel_positions():
    cube = Cube(np.zeros((10, 8, 3), np.float32), georef=rotated(20))
    part = cube.crop(slice(2, 6), slice(3, 8))
    assert part.shape == (4, 5, 3)
    assert np.allclose(part.georef.pixel_centre(1, 1), cube.georef.pixel_centre(3, 4))
    labels = LabelMap(np.zeros((10, 8), np.uint8), georef=NORTH_UP).crop(slice(1, 3), slice(0, 2))
    assert labels.georef.transform[3] == 4200000.0 - 5.0


def test_glt_orthorectifies_and_crops():
    swath = np.arange(1, 7, dtype=np.uint8).reshape(2, 3)
    glt = np.zeros((2, 3, 3), np.int32)
    glt[:, 0, 0] = (1, 1)  # grid (0, 0) <- swath (0, 0)
    glt[:, 2, 1] = (2, 3)  # grid (2, 1) <- swath (1, 2)
    g = Georef(transform=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0), crs=crs_wkt(4326), glt=glt)
    ortho = orthorectify(swath, g.glt)
    assert ortho.tolist() == [[1, 0, 0], [0, 0, 0], [0, 6, 0]]
    crop = g.crop(slice(1, 2), slice(1, 3), swath.shape)
    assert orthorectify(swath[1:2, 1:3], crop.glt).tolist() == [[0, 0, 0], [0, 0, 0], [0, 6, 0]]


@pytest.mark.parametrize("georef", [NORTH_UP, rotated(30), rotated(-100)])
def test_napari_transform_puts_pixel_centres_on_the_map(georef):
    t = georef.napari_transform()
    rot = t.get("rotate", np.eye(2))
    for r, c in [(0, 0), (3, 7), (10, 2)]:
        world = np.asarray(t["translate"]) + rot @ (np.asarray(t["scale"]) * (r, c))
        assert np.allclose(world, georef.pixel_centre(r, c)[::-1], atol=1e-6)


@pytest.mark.parametrize("fmt, kept", [("tif", True), ("hdr", True), ("mat", False),
                                       ("npy", False)])  # fmt: skip
def test_write_prediction_says_what_each_format_loses(tmp_path, fmt, kept):
    classes = np.array([[1, 2], [0, 1]], np.int32)
    conf = np.array([[0.9, 0.8], [0.0, 0.7]], np.float32)
    path, conf_path, note = write_prediction(tmp_path, "s", fmt, classes, conf, ["a", "b"],
                                             None, NORTH_UP)  # fmt: skip
    assert (note is None) == (fmt == "tif") and path.exists() and conf_path.exists()
    assert (read_labels(path).georef == NORTH_UP) == kept
    if fmt == "hdr":
        c = read_cube(conf_path)
        assert c.georef == NORTH_UP and c.ignore_value == 0
    if fmt == "tif":
        georef, _, nodata = tiff_geo(conf_path)
        assert georef == NORTH_UP and nodata == 0
        assert np.array_equal(tifffile.imread(conf_path), conf)


def test_malformed_map_info_leaves_the_pixels_readable(tmp_path, envi_file):
    extra = "map info = {UTM, 1, 1, 500000, north?, 2, 2, 33, North}\n"
    hdr = envi_file(tmp_path / "c.hdr", np.ones((3, 2, 4), np.float32), extra=extra)
    cube = read_cube(hdr)
    assert cube.georef is None and "map info" in cube.metadata["georef_warning"]
