"""Synthetic labelled chips whose labels follow the bands spatially: for tests, demos and quick trials."""

from __future__ import annotations

import datetime as dt
from os import PathLike
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from ..chipping.tiling import smooth_field, synthetic_chip
from ..models.clay.configuration_clay import CLAY_V0_BAND_NAMES


def _write(path: Path, data: np.ndarray, origin: tuple[float, float], epsg: int, **profile) -> None:
    profile = dict(
        driver="GTiff",
        width=data.shape[-1],
        height=data.shape[-2],
        count=data.shape[0],
        dtype=str(data.dtype),
        crs=f"EPSG:{epsg}",
        transform=from_origin(*origin, 10, 10),
        **profile,
    )
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)


def write_synthetic_segmentation(
    output_dir: str | PathLike,
    count: int,
    size: int = 64,
    seed: int = 0,
    water_threshold: float = 0.6,
    nodata_corner: int = 0,
) -> list[Path]:
    """Write `count` 13-band chips to `output_dir/images/` and their water masks to `output_dir/labels/`.

    A smooth random field decides where water is (field > `water_threshold`, class 1; else land, class 0), and each
    pixel takes the spectral signature of its class: the label follows the bands spatially. With `nodata_corner`
    k > 0 the top-left k×k pixels of every image are nodata (-9999) and the label there is 255 (nodata).
    """
    output = Path(output_dir)
    (output / "images").mkdir(parents=True, exist_ok=True)
    (output / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        water = smooth_field(rng, size, scale=4) > water_threshold  # (H, W)
        image = np.where(water[None], synthetic_chip(rng, size, "water"), synthetic_chip(rng, size, "vegetation"))
        labels = water.astype(np.uint8)[None]  # (1, H, W)
        if nodata_corner:
            image[:, :nodata_corner, :nodata_corner] = -9999
            labels[:, :nodata_corner, :nodata_corner] = 255
        origin = (float(rng.uniform(300_000, 600_000)), float(rng.uniform(4_000_000, 5_000_000)))
        name = f"chip_{index:04d}.tif"
        _write(output / "images" / name, image, origin, 32633, nodata=-9999)
        with rasterio.open(output / "images" / name, "r+") as dataset:
            dataset.descriptions = tuple(CLAY_V0_BAND_NAMES)
            dataset.update_tags(date=(dt.date(2020, 1, 1) + dt.timedelta(days=index)).isoformat())
        _write(output / "labels" / name, labels, origin, 32633, nodata=255)
        paths.append(output / "images" / name)
    return paths


def write_synthetic_classification(
    output_dir: str | PathLike, count_per_class: int, size: int = 64, seed: int = 0, classes: tuple = ("water", "bare")
) -> list[Path]:
    """Write `count_per_class` 13-band chips of each land-cover class to `output_dir/<class>/`."""
    from ..chipping.tiling import write_synthetic_chips

    paths = []
    for offset, name in enumerate(classes):
        paths += write_synthetic_chips(Path(output_dir) / name, count_per_class, size, seed + offset, labels=[name])
    return paths


__all__ = ["write_synthetic_classification", "write_synthetic_segmentation"]
