"""GeoTIFF tags read and written by hand (tifffile gives the raw tags; no GDAL needed).

Read: GeoKeys (EPSG codes, or an ``ESRI PE String`` citation), ModelTiepoint + ModelPixelScale
or ModelTransformation, PixelIsPoint shifted to GDAL's corner convention; the GDAL metadata tag
(42112: per-band ``wavelength``/``fwhm``/``bbl``, dataset items of any domain) and GDAL_NODATA
(42113). Written: the same, PixelIsArea, EPSG when pyproj finds one (else the ESRI WKT as a
citation, which GDAL reads too).
"""

from __future__ import annotations

import contextlib
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from ._georef import Georef, to_pyproj

PIXEL_SCALE, TIEPOINT, TRANSFORMATION = 33550, 33922, 34264
GEO_KEYS, GEO_DOUBLES, GEO_ASCII = 34735, 34736, 34737
GDAL_METADATA, GDAL_NODATA = 42112, 42113
_MODEL, _RASTER, _CITATION, _GEOGRAPHIC, _PROJECTED = 1024, 1025, 1026, 2048, 3072
_USER_DEFINED = 32767
_ESRI_PE = "ESRI PE String = "


@dataclass
class GdalMetadata:
    """The GDAL metadata tag: dataset items by (domain, name), band items by name -> values."""

    dataset: dict[tuple[str, str], str] = field(default_factory=dict)
    bands: dict[str, dict[int, str]] = field(default_factory=dict)

    def band_floats(self, name: str, n_bands: int) -> np.ndarray | None:
        """Per-band numbers (band items, else an ENVI-domain ``{a, b, ...}`` list)."""
        items = self.bands.get(name)
        values: list[str] | None = None
        if items and len(items) == n_bands and set(items) == set(range(n_bands)):
            values = [items[i] for i in range(n_bands)]
        elif (text := self.item(name)) is not None:
            values = [v for v in text.strip("{} ").split(",") if v.strip()]
        if values is None or len(values) != n_bands:
            return None
        try:
            return np.asarray([float(v) for v in values], dtype=np.float64)
        except ValueError:
            return None

    def item(self, name: str) -> str | None:
        """A dataset item in the default or the ENVI domain (GDAL's ENVI driver keeps the
        header there, with spaces as underscores)."""
        for key in ((name, ""), (name.replace(" ", "_"), "ENVI"), (name, "ENVI")):
            if (key[1], key[0]) in self.dataset:
                return self.dataset[(key[1], key[0])]
        return None


def parse_gdal_metadata(text: str | bytes | None) -> GdalMetadata:
    out = GdalMetadata()
    if not text:
        return out
    with contextlib.suppress(ET.ParseError):
        root = ET.fromstring(text)
        for item in root.iter("Item"):
            name, value = item.get("name"), (item.text or "").strip()
            if name is None:
                continue
            if item.get("sample") is not None and item.get("role") is None:
                with contextlib.suppress(ValueError):
                    out.bands.setdefault(name, {})[int(item.get("sample"))] = value
            elif item.get("sample") is None:
                out.dataset[(item.get("domain", ""), name)] = value
    return out


def gdal_metadata_xml(dataset: dict[tuple[str, str], str]) -> str:
    items = "".join(
        f"<Item name={quoteattr(name)}" + (f" domain={quoteattr(dom)}" if dom else "")
        + f">{escape(value)}</Item>"
        for (dom, name), value in dataset.items()
    )  # fmt: skip
    return f"<GDALMetadata>{items}</GDALMetadata>"


def _tag(page: Any, code: int) -> Any:
    t = page.tags.get(code)
    return None if t is None else t.value


def _geokeys(page: Any) -> dict[int, Any]:
    raw = _tag(page, GEO_KEYS)
    if raw is None or len(raw) < 4:
        return {}
    doubles, ascii_ = _tag(page, GEO_DOUBLES), _tag(page, GEO_ASCII) or ""
    keys: dict[int, Any] = {}
    for i in range(int(raw[3])):
        key, loc, count, off = (int(v) for v in raw[4 + 4 * i : 8 + 4 * i])
        if loc == 0:
            keys[key] = off
        elif loc == GEO_ASCII:
            keys[key] = str(ascii_)[off : off + count].rstrip("|\x00")
        elif loc == GEO_DOUBLES and doubles is not None:
            keys[key] = tuple(doubles[off : off + count])
    return keys


def _crs(keys: dict[int, Any]) -> str | None:
    for code in (keys.get(_PROJECTED), keys.get(_GEOGRAPHIC)):
        if isinstance(code, int) and 0 < code < _USER_DEFINED:
            return to_pyproj(f"EPSG:{code}").to_wkt()
    for k in (_CITATION, 3073, 2049):
        cite = keys.get(k)
        if isinstance(cite, str) and cite.startswith(_ESRI_PE):
            return to_pyproj(cite[len(_ESRI_PE) :]).to_wkt()
    return None


def read_georef(page: Any) -> Georef | None:
    """The georeferencing of a TIFF page, or None when it has none (InputError when its tags
    are unusable)."""
    keys = _geokeys(page)
    matrix, tie, scale = (_tag(page, c) for c in (TRANSFORMATION, TIEPOINT, PIXEL_SCALE))
    if matrix is not None and len(matrix) == 16:
        m = [float(v) for v in matrix]
        t = (m[3], m[0], m[1], m[7], m[4], m[5])
    elif tie is not None and scale is not None and len(tie) >= 6 and len(scale) >= 2:
        i, j, _, x, y, _ = (float(v) for v in tie[:6])
        sx, sy = float(scale[0]), float(scale[1])
        t = (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    else:
        return Georef(crs=_crs(keys)) if keys else None
    if keys.get(_RASTER) == 2:  # PixelIsPoint: (0, 0) is the first pixel's centre
        x0, a, b, y0, d, e = t
        t = (x0 - (a + b) / 2, a, b, y0 - (d + e) / 2, d, e)
    return Georef(transform=t, crs=_crs(keys))


def georef_tags(georef: Georef | None) -> list[tuple]:
    """tifffile ``extratags`` for a georeferenced grid (PixelIsArea)."""
    if georef is None or georef.transform is None:
        return []
    x0, a, b, y0, d, e = georef.transform
    tags: list[tuple] = []
    if b == 0.0 and d == 0.0 and a > 0 and e < 0:
        tags += [(PIXEL_SCALE, "d", 3, (a, -e, 0.0), True),
                 (TIEPOINT, "d", 6, (0.0, 0.0, 0.0, x0, y0, 0.0), True)]  # fmt: skip
    else:
        m = (a, b, 0.0, x0, d, e, 0.0, y0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        tags.append((TRANSFORMATION, "d", 16, m, True))
    crs = to_pyproj(georef.crs)
    keys = [(_RASTER, 0, 1, 1)]
    ascii_ = ""
    if crs is not None:
        epsg = crs.to_epsg(min_confidence=100)  # a near match would change the CRS
        keys.append((_MODEL, 0, 1, 2 if crs.is_geographic else 1))
        if epsg:
            keys.append((_GEOGRAPHIC if crs.is_geographic else _PROJECTED, 0, 1, epsg))
        else:
            ascii_ = f"{_ESRI_PE}{crs.to_wkt('WKT1_ESRI')}|"
            keys.append((_CITATION, GEO_ASCII, len(ascii_), 0))
            keys.append((_GEOGRAPHIC if crs.is_geographic else _PROJECTED, 0, 1, _USER_DEFINED))
    keys.sort()
    flat = [1, 1, 0, len(keys), *(v for k in keys for v in k)]
    tags.append((GEO_KEYS, "H", len(flat), flat, True))
    if ascii_:
        tags.append((GEO_ASCII, "s", 0, ascii_, True))
    return tags


def nodata(page: Any) -> float | None:
    value = _tag(page, GDAL_NODATA)
    if value is None:
        return None
    try:
        out = float(str(value).strip().strip("\x00"))
    except ValueError:
        return None
    return None if math.isnan(out) else out
