"""One row per patch: the footprint of each patch of a chip, from the chip's footprint."""

from __future__ import annotations

import antimeridian
import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely import MultiPolygon, Polygon


def _local_projection(chip: Polygon | MultiPolygon) -> tuple[Transformer, Transformer]:
    """An azimuthal equidistant projection centred in the chip (metres), forwards and back. A footprint split at
    the antimeridian is centred on its largest part, which is inside the chip."""
    parts = chip.geoms if isinstance(chip, MultiPolygon) else [chip]
    centre = max(parts, key=lambda part: part.area).centroid
    local = CRS.from_proj4(f"+proj=aeqd +lat_0={centre.y} +lon_0={centre.x} +datum=WGS84 +units=m +no_defs")
    wgs84 = CRS.from_user_input("OGC:CRS84")
    return Transformer.from_crs(wgs84, local, always_xy=True), Transformer.from_crs(local, wgs84, always_xy=True)


def _corners_from_north_west(rectangle: Polygon) -> np.ndarray:
    """(4, 2) corners of a rectangle, counter-clockwise from its north-west corner: NW, SW, SE, NE."""
    ring = rectangle.exterior
    corners = np.asarray(ring.coords)[:4]
    if not ring.is_ccw:
        corners = corners[::-1]
    north_west = int(np.argmax(corners[:, 1] - corners[:, 0]))  # holds for rotations under 45°
    return np.roll(corners, -north_west, axis=0)


def patch_footprints(chip: Polygon | MultiPolygon | None, rows: int, cols: int) -> np.ndarray:
    """(rows·cols,) polygons in OGC:CRS84, row-major from the north-west patch, for a chip footprint in OGC:CRS84
    (None → None for every patch).

    The chip is projected to an equidistant projection centred on it, its footprint taken as the smallest rectangle
    around it (a north-up raster's footprint is a rectangle there to within centimetres over a few kilometres),
    divided into rows × cols equal cells, and the cells projected back; a cell across the antimeridian is split
    there, as the chips' footprints are.
    """
    if chip is None or chip.is_empty:
        return np.full(rows * cols, None, dtype=object)
    forward, back = _local_projection(chip)
    local = shapely.transform(chip, lambda xy: np.column_stack(forward.transform(xy[:, 0], xy[:, 1])))
    rectangle = shapely.minimum_rotated_rectangle(local)  # parts split at the antimeridian meet again here
    north_west, south_west, _, north_east = _corners_from_north_west(rectangle)
    u = np.linspace(0.0, 1.0, cols + 1)[None, :, None]  # along a row, west → east
    v = np.linspace(0.0, 1.0, rows + 1)[:, None, None]  # down a column, north → south
    nodes = north_west + u * (north_east - north_west) + v * (south_west - north_west)  # (rows+1, cols+1, 2)
    lon, lat = back.transform(nodes[..., 0].ravel(), nodes[..., 1].ravel())
    nodes = np.stack([lon, lat], axis=-1).reshape(rows + 1, cols + 1, 2)
    rings = np.stack([nodes[:-1, :-1], nodes[1:, :-1], nodes[1:, 1:], nodes[:-1, 1:], nodes[:-1, :-1]], axis=2).reshape(
        rows * cols, 5, 2
    )  # NW, SW, SE, NE, NW of each cell, counter-clockwise
    patches = shapely.polygons(rings).astype(object)
    crossing = np.ptp(rings[:, :, 0], axis=1) > 180  # a cell whose corners jump across ±180°
    for index in np.flatnonzero(crossing):
        patches[index] = antimeridian.fix_polygon(Polygon(rings[index]), fix_winding=False)
    return patches


__all__ = ["patch_footprints"]
