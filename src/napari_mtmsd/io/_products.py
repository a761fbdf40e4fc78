"""Sensor products: EnMAP / DESIS folders, EMIT netCDF, PRISMA L2D HDF-EOS5, NEON AOP HDF5.

Each reader follows the product's published layout (see docs/io.md for which ones were checked
against a real file) and hands back a ``Cube`` with wavelengths in nm, FWHM, no-data value, bad
bands and georeferencing. HDF5 cubes stay lazy (a LazyArray over the open dataset) except
PRISMA, whose two detectors are rescaled and merged in memory.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ._georef import Georef, crs_wkt, from_envi, to_pyproj
from ._types import Cube, LazyArray

SPECTRAL_IMAGE = re.compile(r"SPECTRAL_IMAGE\.tiff?$", re.IGNORECASE)
METADATA_XML = re.compile(r"METADATA\.xml$", re.IGNORECASE)
PRISMA_CUBES = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
PRISMA_PIXEL_M = 30.0


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def band_characterisation(xml: Path) -> dict[str, np.ndarray]:
    """Per-band ``wavelength``, ``fwhm``, ``gain``, ``offset`` from an EnMAP (``bandID`` with
    ``FWHMOfBand``) or DESIS (``band`` with ``wavelengthWidthOfBand``) METADATA.XML."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(f"{xml}: cannot parse the product metadata ({e})") from e
    names = {"wavelengthcenterofband": "wavelength", "fwhmofband": "fwhm",
             "wavelengthwidthofband": "fwhm", "gainofband": "gain", "offsetofband": "offset"}  # fmt: skip
    columns: dict[str, list[float]] = {}
    for band in root.iter():
        if _local(band.tag) not in ("bandid", "band"):
            continue
        fields = {names[_local(c.tag)]: c.text for c in band if _local(c.tag) in names}
        if "wavelength" not in fields:
            continue
        for key in ("wavelength", "fwhm", "gain", "offset"):
            try:
                columns.setdefault(key, []).append(float(fields.get(key) or "nan"))
            except ValueError:
                columns.setdefault(key, []).append(np.nan)
    return {k: np.asarray(v) for k, v in columns.items() if not np.isnan(v).all()}


def sidecar_xml(image: Path) -> Path | None:
    """The METADATA.XML of an EnMAP/DESIS ``...SPECTRAL_IMAGE.TIF``."""
    if not SPECTRAL_IMAGE.search(image.name):
        return None
    stem = SPECTRAL_IMAGE.sub("", image.name)
    for cand in image.parent.iterdir():
        if cand.name.startswith(stem) and METADATA_XML.search(cand.name):
            return cand
    return None


def with_sidecar_metadata(cube: Cube, image: Path) -> Cube:
    """Band centres, FWHM, gains and offsets from the product's METADATA.XML beside ``image``
    (the GeoTIFF's own GDAL metadata wins where it has them)."""
    xml = sidecar_xml(image)
    if xml is None:
        return cube
    bands = band_characterisation(xml)
    if bands.get("wavelength", np.empty(0)).size != cube.n_bands:
        cube.metadata["header_warning"] = f"{xml.name}: band list does not match the image"
        return cube
    cube.metadata.update(
        metadata_file=str(xml), sensor="DESIS" if "DESIS" in xml.name.upper() else "EnMAP"
    )
    for key in ("fwhm", "gain", "offset"):
        if key in bands and key not in cube.metadata:
            cube.metadata[key] = bands[key]
    if cube.wavelengths is None:
        cube.wavelengths, cube.wavelength_units = bands["wavelength"], "nm"
    return cube


def folder_image(folder: Path) -> Path | None:
    """The SPECTRAL_IMAGE GeoTIFF of an EnMAP or DESIS product folder."""
    images = sorted(p for p in folder.iterdir() if SPECTRAL_IMAGE.search(p.name))
    return images[0] if images else None


# ------------------------------------------------------------------------------------ HDF5


def hdf5_product(path: Path) -> str | None:
    """'emit', 'prisma' or 'neon' from the file's structure; None for anything else."""
    try:
        with h5py.File(path, "r") as f:
            if "sensor_band_parameters" in f and ("reflectance" in f or "radiance" in f):
                return "emit"
            if PRISMA_CUBES in f:
                return "prisma"
            if any(f"{k}/Reflectance/Reflectance_Data" in f for k in f):
                return "neon"
    except (OSError, ValueError):
        return None
    return None


def _text(value: Any) -> str:
    value = value[()] if isinstance(value, h5py.Dataset) else value
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size == 1 else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _floats(group: h5py.Group, key: str) -> np.ndarray | None:
    return np.asarray(group[key][()], np.float64).ravel() if key in group else None


def _present(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if v is not None}


def read_emit(path: Path) -> Cube:
    """EMIT L2A reflectance / L1B radiance (downtrack, crosstrack, bands), lazy; classified as
    the swath, with the GLT and its grid's geotransform and CRS for orthorectified output."""
    f = h5py.File(path, "r")
    var = "reflectance" if "reflectance" in f else "radiance"
    data = f[var]
    bands = f["sensor_band_parameters"]
    wl = np.asarray(bands["wavelengths"][()], np.float64)
    good = bands["good_wavelengths"][()] if "good_wavelengths" in bands else None
    georef = None
    if "location" in f and "glt_x" in f["location"] and "geotransform" in f.attrs:
        glt = np.stack([f["location/glt_y"][()], f["location/glt_x"][()]]).astype(np.int32)
        crs = (
            to_pyproj(_text(f.attrs["spatial_ref"])).to_wkt() if "spatial_ref" in f.attrs else None
        )
        georef = Georef(transform=tuple(f.attrs["geotransform"][:6]), crs=crs, glt=glt)
    fill = data.attrs.get("_FillValue")
    return Cube(
        data=LazyArray(data, axes=(0, 1, 2)),
        wavelengths=wl,
        wavelength_units="nm",
        ignore_value=None if fill is None else float(np.ravel(fill)[0]),
        name=path.stem,
        metadata=_present({"format": "emit", "path": str(path), "sensor": "EMIT",
                           "variable": var, "fwhm": _floats(bands, "fwhm")}),
        georef=georef,
        bad_bands=None if good is None else np.asarray(good).ravel() == 0,
    )  # fmt: skip


def _prisma_detector(f: h5py.File, name: str, short: str) -> tuple[np.ndarray, ...]:
    """(reflectance (H, W, b) float32, wavelengths, fwhm) of one detector, unused bands
    (centre 0) dropped."""
    dn = f[f"{PRISMA_CUBES}/{name}_Cube"]  # (rows, bands, cols)
    cw = np.asarray(f.attrs[f"List_Cw_{short}"], np.float64).ravel()
    fwhm = np.asarray(f.attrs[f"List_Fwhm_{short}"], np.float64).ravel()
    lo, hi = (float(np.ravel(f.attrs[f"L2Scale{short}{m}"])[0]) for m in ("Min", "Max"))
    keep = np.flatnonzero(cw > 0)
    cube = np.empty((dn.shape[0], dn.shape[2], keep.size), np.float32)
    for i, b in enumerate(keep):
        cube[:, :, i] = lo + dn[:, b, :].astype(np.float32) * ((hi - lo) / 65535.0)
    return cube, cw[keep], fwhm[keep]


def read_prisma(path: Path) -> Cube:
    """PRISMA L2D: VNIR and SWIR rescaled by ``L2Scale*Min/Max`` and merged in wavelength order;
    the grid from ``Epsg_Code`` and the corner coordinates."""
    with h5py.File(path, "r") as f:
        parts = [_prisma_detector(f, "VNIR", "Vnir"), _prisma_detector(f, "SWIR", "Swir")]
        cube = np.concatenate([p[0] for p in parts], axis=2)
        wl = np.concatenate([p[1] for p in parts])
        fwhm = np.concatenate([p[2] for p in parts])
        order = np.argsort(wl, kind="stable")
        cube, wl, fwhm = cube[:, :, order], wl[order], fwhm[order]
        georef = _prisma_grid(f, cube.shape[:2])
    return Cube(
        data=cube, wavelengths=wl, wavelength_units="nm", name=path.stem,
        metadata={"format": "prisma", "path": str(path), "sensor": "PRISMA", "fwhm": fwhm},
        georef=georef,
    )  # fmt: skip


def _prisma_grid(f: h5py.File, shape: tuple[int, int]) -> Georef | None:
    """The corner attributes may be outer corners or corner-pixel centres: whichever spacing
    is nearer PRISMA's 30 m pixel decides."""
    keys = ("Epsg_Code", "Product_ULcorner_easting", "Product_ULcorner_northing",
            "Product_LRcorner_easting", "Product_LRcorner_northing")  # fmt: skip
    if not all(k in f.attrs for k in keys):
        return None
    epsg, ule, uln, lre, lrn = (float(np.ravel(f.attrs[k])[0]) for k in keys)
    h, w = shape
    span_x, span_y = lre - ule, uln - lrn
    centres = abs(span_x / max(w - 1, 1) - PRISMA_PIXEL_M) < abs(span_x / w - PRISMA_PIXEL_M)
    px = span_x / (w - 1 if centres else w)
    py = span_y / (h - 1 if centres else h)
    x0, y0 = (ule - px / 2, uln + py / 2) if centres else (ule, uln)
    return Georef(transform=(x0, px, 0.0, y0, 0.0, -py), crs=crs_wkt(int(epsg)))


def read_neon(path: Path) -> Cube:
    """NEON AOP reflectance: int16 (rows, cols, bands), lazy; ``Scale_Factor`` recorded,
    ``Data_Ignore_Value``, the water-vapour ``Band_Window_*`` of the Reflectance group as bad
    bands, ``Map_Info`` with ``EPSG Code``."""
    f = h5py.File(path, "r")
    site = next(k for k in f if f"{k}/Reflectance/Reflectance_Data" in f)
    refl = f[f"{site}/Reflectance"]
    data = refl["Reflectance_Data"]
    meta = refl["Metadata"]
    wl = np.asarray(meta["Spectral_Data/Wavelength"][()], np.float64)
    bad = np.zeros(wl.size, bool)
    for key, value in [*refl.attrs.items(), *data.attrs.items()]:  # NEON puts them on the group
        if key.startswith("Band_Window") and np.size(value) == 2:
            lo, hi = sorted(float(v) for v in np.ravel(value))
            bad |= (wl >= lo) & (wl <= hi)
    cs = meta["Coordinate_System"]
    georef = None
    if "Map_Info" in cs:
        css = _text(cs["Coordinate_System_String"]) if "Coordinate_System_String" in cs else None
        georef = from_envi(_text(cs["Map_Info"]), css)
        epsg = _text(cs["EPSG Code"]).strip() if "EPSG Code" in cs else ""
        if epsg.isdigit():  # the code NEON states beats a CRS rebuilt from map info
            georef = Georef(transform=georef.transform, crs=crs_wkt(int(epsg)))
    ignore = data.attrs.get("Data_Ignore_Value")
    scale = data.attrs.get("Scale_Factor")
    return Cube(
        data=LazyArray(data, axes=(0, 1, 2)),
        wavelengths=wl,
        wavelength_units="nm",
        ignore_value=None if ignore is None else float(np.ravel(ignore)[0]),
        name=f"{path.stem}",
        metadata=_present({"format": "neon", "path": str(path), "sensor": "NEON AOP",
                           "site": site, "fwhm": _floats(meta, "Spectral_Data/FWHM"),
                           "reflectance_scale_factor": None if scale is None
                           else float(np.ravel(scale)[0])}),
        georef=georef,
        bad_bands=bad if bad.any() else None,
    )  # fmt: skip
