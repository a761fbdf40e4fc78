"""Georeferencing as data: a CRS, an affine geotransform (rotation included) or a swath's GLT.

The transform is GDAL's six numbers ``(x0, a, b, y0, d, e)``: the map position of the outer
corner of pixel (row r, col c) is ``x = x0 + a*c + b*r``, ``y = y0 + d*c + e*r``; pixel centres are
at ``c + 0.5, r + 0.5``. ENVI ``map info`` and GeoTIFF tags are parsed into and written from it.

Swath products (EMIT) are classified in sensor geometry; their ``glt`` maps each cell of an
orthorectified grid (described by ``transform`` and ``crs``) to a 1-based (row, col) of the swath,
0 where no swath pixel lands. ``orthorectify`` applies it to class maps on output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import InputError

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True, eq=False)
class Georef:
    """Where a raster lies on the Earth; ``glt`` set means ``transform`` is the GLT grid's."""

    transform: Transform | None = None
    crs: str | None = None  # WKT (any flavour pyproj reads: WKT2, WKT1, ESRI)
    glt: np.ndarray | None = None  # (2, H_grid, W_grid) int32: 1-based swath row, col; 0 = none

    def __post_init__(self) -> None:
        if self.transform is not None:
            t = tuple(float(v) for v in self.transform)
            if len(t) != 6 or not all(math.isfinite(v) for v in t):
                raise InputError(f"a geotransform is 6 finite numbers, got {self.transform}")
            if t[1] * t[5] - t[2] * t[4] == 0:
                raise InputError(f"the geotransform {t} is singular (zero pixel size)")
            object.__setattr__(self, "transform", t)
        if self.glt is not None:
            glt = np.asarray(self.glt, dtype=np.int32)
            if glt.ndim != 3 or glt.shape[0] != 2:
                raise InputError(f"a GLT is (2, rows, cols), got shape {glt.shape}")
            object.__setattr__(self, "glt", glt)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Georef):
            return NotImplemented
        same_glt = (self.glt is None and other.glt is None) or (
            self.glt is not None and other.glt is not None and np.array_equal(self.glt, other.glt)
        )
        return self.transform == other.transform and same_crs(self.crs, other.crs) and same_glt

    __hash__ = None  # type: ignore[assignment]

    @property
    def is_swath(self) -> bool:
        return self.glt is not None

    @property
    def pixel_size(self) -> tuple[float, float] | None:
        """(x, y) ground size of a pixel in CRS units (of the GLT grid for a swath)."""
        if self.transform is None:
            return None
        _, a, b, _, d, e = self.transform
        return math.hypot(a, d), math.hypot(b, e)

    @property
    def rotation(self) -> float:
        """Degrees, ENVI's sense (``map info`` ``rotation=``); 0 for a north-up grid."""
        if self.transform is None:
            return 0.0
        return math.degrees(math.atan2(self.transform[2], self.transform[1]))

    def epsg(self) -> int | None:
        crs = to_pyproj(self.crs)
        return None if crs is None else crs.to_epsg(min_confidence=100)

    def crs_name(self) -> str | None:
        crs = to_pyproj(self.crs)
        return None if crs is None else crs.name

    def pixel_centre(self, row: float, col: float) -> tuple[float, float]:
        """(x, y) map position of the centre of pixel (row, col) of the grid."""
        x0, a, b, y0, d, e = self._require()
        return x0 + a * (col + 0.5) + b * (row + 0.5), y0 + d * (col + 0.5) + e * (row + 0.5)

    def crop(self, rows: slice, cols: slice, shape: tuple[int, int]) -> Georef:
        """The georeferencing of ``array[rows, cols]`` of an array of ``shape`` (unit steps)."""
        r0, r1, rs = rows.indices(shape[0])
        c0, c1, cs = cols.indices(shape[1])
        if rs != 1 or cs != 1:
            raise InputError("only contiguous crops (step 1) keep the georeferencing")
        if self.glt is not None:
            row, col = self.glt[0].astype(np.int64) - 1, self.glt[1].astype(np.int64) - 1
            inside = (row >= r0) & (row < r1) & (col >= c0) & (col < c1) & (self.glt[0] > 0)
            glt = np.where(inside, np.stack([row - r0 + 1, col - c0 + 1]), 0)
            return replace(self, glt=glt.astype(np.int32))
        if self.transform is None:
            return self
        x0, a, b, y0, d, e = self.transform
        return replace(self, transform=(x0 + a * c0 + b * r0, a, b, y0 + d * c0 + e * r0, d, e))

    def _require(self) -> Transform:
        if self.transform is None:
            raise InputError("this raster has no geotransform")
        return self.transform  # type: ignore[return-value]

    def napari_transform(self) -> dict[str, Any]:
        """napari ``scale``/``translate``/``rotate`` putting pixel centres at their (y, x) map
        position (world axis 0 = northing, 1 = easting); empty for a swath or no transform."""
        if self.transform is None or self.glt is not None:
            return {}
        _, a, b, _, d, e = self.transform
        m = np.array([[e, d], [b, a]])  # (row, col) -> (y, x)
        # easting grows with columns; northing's scale takes the sign that leaves a rotation
        sx, sy = math.hypot(a, d), math.copysign(math.hypot(e, b), np.linalg.det(m))
        rot = m @ np.diag([1 / sy, 1 / sx])
        y, x = self.pixel_centre(0, 0)[::-1]
        out: dict[str, Any] = {"scale": (sy, sx), "translate": (y, x)}
        if not np.allclose(rot, np.eye(2), atol=1e-12):
            if not np.allclose(rot @ rot.T, np.eye(2), atol=1e-9) or np.linalg.det(rot) < 0:
                out = {"affine": np.array([[e, d, y], [b, a, x], [0, 0, 1]])}
            else:
                out["rotate"] = rot
        return out


def to_pyproj(wkt: str | None) -> Any:
    """A ``pyproj.CRS`` from WKT / ``EPSG:n``, or None; pyproj is imported only when needed."""
    if not wkt:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(wkt)
    except CRSError as e:
        raise InputError(f"not a coordinate reference system pyproj understands: {e}") from e


def crs_wkt(user_input: Any) -> str:
    """WKT2 of ``EPSG:n``, an integer EPSG code or any WKT."""
    crs = to_pyproj(f"EPSG:{user_input}" if isinstance(user_input, int) else str(user_input))
    return crs.to_wkt()


def same_crs(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return not a and not b
    if a == b:
        return True
    ca, cb = to_pyproj(a), to_pyproj(b)
    if ca.equals(cb, ignore_axis_order=True):
        return True
    # ESRI WKT renames datums ("D_Unknown..."): then the projection parameters decide.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return bool(ca.to_proj4() == cb.to_proj4())


def orthorectify(swath: np.ndarray, glt: np.ndarray, fill: Any = 0) -> np.ndarray:
    """A swath array (H, W[, ...]) resampled onto the GLT grid (nearest), ``fill`` elsewhere."""
    swath = np.asarray(swath)
    rows, cols = glt[0].astype(np.int64) - 1, glt[1].astype(np.int64) - 1
    ok = (glt[0] > 0) & (glt[1] > 0) & (rows < swath.shape[0]) & (cols < swath.shape[1])
    out = np.full(glt.shape[1:] + swath.shape[2:], fill, dtype=swath.dtype)
    out[ok] = swath[rows[ok], cols[ok]]
    return out


# ------------------------------------------------------------------------- ENVI map info

_ENVI_DATUMS = {"WGS-84": ("WGS84", 32600, 32700), "North America 1983": ("NAD83", 26900, None)}


def _envi_crs(fields: list[str], css: str | None) -> str | None:
    """CRS from the ``coordinate system string`` (ESRI WKT), else from a UTM or geographic
    ``map info``; None for other projections without a coordinate system string."""
    if css:
        return to_pyproj(css).to_wkt()
    name = fields[0].strip().lower()
    plain = [f.strip() for f in fields[7:] if "=" not in f]
    if name.startswith("utm") and len(plain) >= 2:
        zone, south = int(plain[0]), plain[1].lower().startswith("s")
        datum = _ENVI_DATUMS.get(plain[2] if len(plain) > 2 else "", None)
        if datum is not None and (base := datum[2 if south else 1]) is not None:
            return crs_wkt(base + zone)
        proj = f"+proj=utm +zone={zone}{' +south' if south else ''} "
        return crs_wkt(proj + f"+datum={datum[0] if datum else 'WGS84'} +units=m +no_defs")
    if name.startswith("geographic lat"):
        datum = plain[0] if plain else "WGS-84"
        return crs_wkt(4269 if datum == "North America 1983" else 4326)
    return None


def from_envi(map_info: Any, css: Any = None) -> Georef | None:
    """A Georef from ENVI ``map info`` (a list of fields) and ``coordinate system string``.

    ENVI counts pixels from 1 and puts integer positions on pixel corners: the tie point
    (x_ref, y_ref) = (1, 1) is the outer corner of the first pixel, (1.5, 1.5) its centre.
    ``rotation=`` turns the grid about the tie point (GDAL's sign convention).
    """
    if map_info is None:
        return None
    fields = [str(f).strip() for f in (map_info if isinstance(map_info, list) else
                                       str(map_info).strip("{}").split(","))]  # fmt: skip
    if len(fields) < 7:
        raise InputError(f"map info needs at least 7 fields, got {len(fields)}: {fields}")
    try:
        xref, yref, east, north, px, py = (float(f) for f in fields[1:7])
        named = {k.strip().lower(): v.strip() for k, _, v in
                 (f.partition("=") for f in fields[7:] if "=" in f)}  # fmt: skip
        rot = float(named.get("rotation", 0.0))
    except ValueError as e:
        raise InputError(f"map info: {e} in {fields}") from e
    if rot == 0.0:
        a, b, d, e = px, 0.0, 0.0, -py
    elif abs(rot) == 180.0:
        a, b, d, e = -px, 0.0, 0.0, py
    else:
        r = math.radians(rot)
        a, b, d, e = math.cos(r) * px, math.sin(r) * px, math.sin(r) * py, -math.cos(r) * py
    x0 = east - (a * (xref - 1) + b * (yref - 1))
    y0 = north - (d * (xref - 1) + e * (yref - 1))
    css_text = ",".join(css) if isinstance(css, list) else css
    return Georef(transform=(x0, a, b, y0, d, e), crs=_envi_crs(fields, css_text))


def to_envi(georef: Georef) -> dict[str, str]:
    """``map info`` (tie point at (1, 1), ``rotation=`` when rotated) and ``coordinate system
    string`` header fields; InputError for a transform that is not a scaled rotation."""
    x0, a, b, y0, d, e = georef._require()
    px, py = math.hypot(a, b), math.hypot(d, e)
    rot = georef.rotation
    r = math.radians(rot)
    expect = (math.cos(r) * px, math.sin(r) * px, math.sin(r) * py, -math.cos(r) * py)
    if rot == 0.0:
        px, py = a, -e
    elif not np.allclose((a, b, d, e), expect, rtol=0, atol=1e-9 * max(px, py)):
        raise InputError(
            f"the geotransform {georef.transform} is sheared or mirrored: ENVI map info "
            "holds only pixel sizes and a rotation"
        )
    crs = to_pyproj(georef.crs)
    head, tail = "Arbitrary", ""
    if crs is not None and crs.utm_zone:
        datum = next((k for k, v in _ENVI_DATUMS.items() if crs.to_epsg() and
                      crs.to_epsg() - int(crs.utm_zone[:-1]) in v[1:]), None)  # fmt: skip
        south = crs.utm_zone.endswith("S")
        tail = f", {int(crs.utm_zone[:-1])}, {'South' if south else 'North'}"
        tail += f", {datum}" if datum else ""
        head = "UTM"
    elif crs is not None and crs.is_geographic:
        head = "Geographic Lat/Lon"
        tail = ", North America 1983" if crs.to_epsg() == 4269 else ", WGS-84"
    units = ", units=Meters" if crs is not None and crs.is_projected else ""
    if crs is not None and crs.is_geographic:
        units = ", units=Degrees"
    rotation = f", rotation={rot!r}" if rot != 0.0 else ""
    out = {"map info": f"{{{head}, 1, 1, {x0!r}, {y0!r}, {px!r}, {py!r}{tail}{units}{rotation}}}"}
    if crs is not None:
        out["coordinate system string"] = "{" + crs.to_wkt("WKT1_ESRI") + "}"
    return out
