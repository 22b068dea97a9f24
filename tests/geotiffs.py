"""Helpers that write small GeoTIFFs for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_geotiff(
    path: Path,
    bands: int = 13,
    size: tuple[int, int] = (32, 32),
    dtype: str = "float32",
    crs: str | None = "EPSG:32633",
    date: str | None = "2021-06-15",
    nodata: float | None = None,
    data: np.ndarray | None = None,
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
    resolution: float = 10.0,
    seed: int = 0,
) -> Path:
    """Write a GeoTIFF with random values (or `data`), an optional CRS, `date` tag and nodata."""
    height, width = size
    if data is None:
        data = np.random.default_rng(seed).uniform(1, 5000, (bands, height, width)).astype(dtype)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=data.shape[0],
        dtype=dtype,
        transform=from_origin(*origin, resolution, resolution),
        compress="deflate",
        nodata=nodata,
    )
    if crs is not None:
        profile["crs"] = crs
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
        if date is not None:
            dataset.update_tags(date=date)
    return path
