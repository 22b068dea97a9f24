"""Chip footprints on the globe: a chip's outline in its own CRS → a valid (Multi)Polygon in OGC:CRS84.

A footprint follows the chip's pixel grid (a rotated chip gets its outline, not its envelope), with edges densified
before reprojecting. Longitudes are normalised to [-180, 180] (0–360 grids and values a hair past ±180 included);
an outline that crosses the antimeridian is split into a MultiPolygon and one around a pole reaches it, both by the
`antimeridian` package (RFC 7946 §3.1.9). Bounding boxes follow GeoParquet: `xmin > xmax` when they cross the
antimeridian.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import antimeridian
import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely import MultiPolygon, Polygon

CRS84 = CRS.from_user_input("OGC:CRS84")
#: Points per side of a chip outline, so that long edges follow the curve they map to.
POINTS_PER_SIDE = 16


def normalize_longitude(lon: np.ndarray | float) -> np.ndarray | float:
    """Longitudes in [-180, 180]: 0–360 values and rounding a hair past ±180 wrapped, values inside kept as they are."""
    lon = np.asarray(lon, dtype=np.float64)
    wrapped = np.where((lon < -180) | (lon > 180), (lon + 180.0) % 360.0 - 180.0, lon)
    return float(wrapped) if wrapped.ndim == 0 else wrapped


def chip_outline(transform: Sequence[float], width: int, height: int) -> Polygon:
    """The chip's pixel-grid outline in its own CRS (counter-clockwise), `POINTS_PER_SIDE` points per side.

    `transform` is the chip's affine transform (rasterio's order a, b, c, d, e, f).
    """
    a, b, c, d, e, f = tuple(transform)[:6]
    steps = np.linspace(0.0, 1.0, POINTS_PER_SIDE, endpoint=False)
    cols = np.concatenate([steps * width, np.full_like(steps, width), (1 - steps) * width, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * height, np.full_like(steps, height), (1 - steps) * height])
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    return shapely.orient_polygons(Polygon(np.column_stack([xs, ys])))


@functools.lru_cache(maxsize=256)
def _to_crs84(crs: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(crs), CRS84, always_xy=True)


def footprint(outline: Polygon, crs: str | int | CRS) -> Polygon | MultiPolygon:
    """`outline` (in `crs`: WKT, "EPSG:…", an EPSG code or a pyproj CRS) as a valid footprint in OGC:CRS84.

    Raises ValueError when the outline does not map to finite longitudes and latitudes.
    """
    crs_text = crs.to_wkt() if isinstance(crs, CRS) else (f"EPSG:{crs}" if isinstance(crs, int) else crs)
    transformer = _to_crs84(crs_text)
    coords = np.asarray(outline.exterior.coords)  # (N, 2) in the chip's CRS
    lon, lat = transformer.transform(coords[:, 0], coords[:, 1])
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()) or np.abs(lat).max() > 90 + 1e-9:
        raise ValueError(f"the chip's outline does not map to longitudes and latitudes in {CRS84.name}")
    ring = np.column_stack([normalize_longitude(lon), np.clip(lat, -90.0, 90.0)])
    polygon = Polygon(ring)
    if not (np.abs(np.diff(ring[:, 0])) > 180).any():
        # No antimeridian crossing: counter-clockwise in lon/lat whatever the CRS's axes (a mirrored CRS flips it).
        polygon = shapely.orient_polygons(polygon)
    # A crossing ring keeps the orientation of the outline in its own CRS (counter-clockwise, see chip_outline).
    return antimeridian.fix_polygon(polygon, fix_winding=False)


def longitude_intervals(geometry: Polygon | MultiPolygon) -> list[tuple[float, float]]:
    """The [west, east] longitude spans of each part of a footprint (parts never cross the antimeridian)."""
    parts = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    return [(part.bounds[0], part.bounds[2]) for part in parts if not part.is_empty]


def lonlat_bbox(geometries: Iterable[Polygon | MultiPolygon]) -> list[float] | None:
    """[west, south, east, north] of footprints: the smallest longitude span on the circle that covers them all
    (`west > east` when it crosses the antimeridian, as GeoParquet and STAC write it), or None if there are none."""
    intervals, south, north = [], np.inf, -np.inf
    for geometry in geometries:
        if geometry is None or geometry.is_empty:
            continue
        intervals += longitude_intervals(geometry)
        south, north = min(south, geometry.bounds[1]), max(north, geometry.bounds[3])
    if not intervals:
        return None
    west, east = _covering_span(intervals)
    return [west, float(south), east, float(north)]


def _covering_span(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(west, east) of the complement of the largest longitude gap left by `intervals` on the circle."""
    merged: list[list[float]] = []
    for west, east in sorted(intervals):
        if merged and west <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], east)
        else:
            merged.append([west, east])
    # Gaps between consecutive spans, and the one across the antimeridian (from the last span to the first).
    gaps = [(merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)]
    gaps.append((merged[-1][1], merged[0][0] + 360.0))
    gap_start, gap_end = max(gaps, key=lambda gap: gap[1] - gap[0])
    if gap_end - gap_start <= 0:
        return -180.0, 180.0  # the whole circle
    if gap_end > 180.0:  # the largest gap is across the antimeridian: an ordinary span
        return float(merged[0][0]), float(merged[-1][1])
    return float(gap_end), float(gap_start)


__all__ = ["CRS84", "chip_outline", "footprint", "lonlat_bbox", "normalize_longitude"]
