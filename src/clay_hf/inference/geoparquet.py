"""GeoParquet helpers shared by embeddings, prediction and search: the chip footprint in OGC:CRS84 and the file's `geo`
metadata (GeoParquet 1.1)."""

from __future__ import annotations

from collections.abc import Sequence

from shapely import MultiPolygon, Polygon, box

from ..utils.geometry import CRS84, chip_outline, footprint


def chip_footprint(
    bbox: Sequence[float],
    crs: str | int,
    transform: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
) -> Polygon | MultiPolygon:
    """The chip's outline in OGC:CRS84: its pixel grid (`transform` and `size` = (height, width)) when given, else
    its `bbox`, in `crs` (WKT, "EPSG:…" or an EPSG code). Split at the antimeridian, reaching a pole it contains
    (see `clay_hf.utils.geometry`)."""
    if transform is not None and size is not None:
        outline = chip_outline(transform, width=size[1], height=size[0])
    else:
        outline = box(*bbox)
    return footprint(outline, crs)


def geo_metadata(bbox: list[float] | None, geometry_types: Sequence[str] = ("Polygon",)) -> dict:
    column = {"encoding": "WKB", "geometry_types": sorted(geometry_types), "crs": CRS84.to_json_dict()}
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


__all__ = ["chip_footprint", "geo_metadata"]
