"""Reading one Clay chip: a multiband GeoTIFF with its date, place and footprint."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from os import PathLike
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from ..geometry import normalize_longitude
from ..image_processing_clay import parse_date

#: v0 chip names: claytile_{MGRS}_{YYYYMMDD}_v{NN}_{counter:04d}.tif
CHIP_NAME_PATTERN = re.compile(r"claytile_(?P<tile>[^_/]+)_(?P<date>\d{8})_v(?P<version>\d+)_(?P<counter>\d+)\.tiff?$")


class ChipError(ValueError):
    """A chip that cannot be used; the message names the file and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclass
class Chip:
    """One chip. `pixels` keep the file's dtype; `bbox` is (left, bottom, right, top) in the chip's CRS, `crs` that
    CRS as WKT (any CRS, with or without an EPSG code), `transform` the pixel grid's affine transform (a … f)."""

    pixels: np.ndarray | None  # (C, H, W)
    date: dt.date
    lon: float
    lat: float
    bbox: tuple[float, float, float, float]
    epsg: int | None
    source_url: str
    tags: dict[str, str]
    crs: str = ""
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def to_example(self) -> dict[str, Any]:
        """The record the `datasets` loader yields (see `clay_hf.data.dataset.chip_features`)."""
        return {
            "pixels": self.pixels,
            "date": self.date,
            "lon": self.lon,
            "lat": self.lat,
            "bbox": list(self.bbox),
            "epsg": -1 if self.epsg is None else self.epsg,
            "crs": self.crs,
            "transform": list(self.transform),
            "source_url": self.source_url,
        }


def _is_remote(text: str) -> bool:
    return "://" in text or text.startswith("/vsi")


def chip_key(source: str | PathLike) -> str:
    """What identifies a chip wherever it is named from: an absolute, normalised local path (relative or absolute
    spellings, trailing slashes and `..` agree), or a URL / GDAL path without its query string (signed URLs of one
    object agree)."""
    text = os.fspath(source)
    if _is_remote(text):
        parts = urlsplit(text)
        return parts._replace(query="", fragment="").geturl().rstrip("/")
    return os.path.abspath(text)


def chip_file_name(source: str | PathLike) -> str:
    """The chip's file name without folders, GDAL `/vsi…` prefixes or query string: `…/a.tif?X-Amz-…` → `a.tif`."""
    key = chip_key(source) if _is_remote(os.fspath(source)) else os.fspath(source)
    return key.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def date_from_filename(name: str | PathLike) -> dt.date | None:
    """The date of a v0 chip name `claytile_{MGRS}_{YYYYMMDD}_v{NN}_{counter}.tif` (a path or URL: its file name
    is used, without query string), or None."""
    match = CHIP_NAME_PATTERN.search(chip_file_name(name))
    if match is None:
        return None
    try:
        return dt.datetime.strptime(match["date"], "%Y%m%d").date()
    except ValueError:
        return None


def read_chip(
    source: str | PathLike | Any,
    date: dt.date | str | None = None,
    read_pixels: bool = True,
    num_bands: int | None = None,
    size: tuple[int, int] | None = None,
    source_url: str | None = None,
) -> Chip:
    """Read a chip from a local path, any URL GDAL reads (`s3://`, `https://`, `/vsi…`) or an open `MemoryFile`.

    The date is `date` when given, else the file's `date` tag, else the date in a v0 file name. With `num_bands`
    or `size` (height, width), a chip that differs is rejected. Every problem raises [`ChipError`] naming the file.
    """
    name = source_url or (str(source) if isinstance(source, (str, PathLike)) else str(source.name))
    try:
        with _open(source) as dataset:
            if num_bands is not None and dataset.count != num_bands:
                raise ChipError(name, f"has {dataset.count} bands, expected {num_bands}")
            if size is not None and (dataset.height, dataset.width) != tuple(size):
                raise ChipError(name, f"is {dataset.height}×{dataset.width} pixels, expected {size[0]}×{size[1]}")
            if dataset.crs is None:
                raise ChipError(name, "has no CRS, so its place is unknown")
            tags = dataset.tags()
            chip_date = resolve_chip_date(name, date, tags)
            lon, lat = _centre_lonlat(name, dataset)
            pixels = dataset.read() if read_pixels else None
            bounds = dataset.bounds
            epsg = dataset.crs.to_epsg()
            crs = dataset.crs.to_wkt()
            transform = tuple(dataset.transform)[:6]
    except ChipError:
        raise
    except (RasterioError, OSError) as error:
        raise ChipError(name, f"cannot be read ({error})") from error
    return Chip(
        pixels=pixels,
        date=chip_date,
        lon=lon,
        lat=lat,
        bbox=(bounds.left, bounds.bottom, bounds.right, bounds.top),
        epsg=epsg,
        source_url=name,
        tags=tags,
        crs=crs,
        transform=transform,
    )


def _centre_lonlat(name: str, dataset: Any) -> tuple[float, float]:
    """The chip centre's longitude in [-180, 180] (0–360 grids and rounding past ±180 normalised) and latitude."""
    try:
        lon, lat = dataset.lnglat()
    except Exception as error:  # PROJ errors for a CRS it cannot transform
        raise ChipError(name, f"its centre cannot be placed in longitude/latitude ({error})") from None
    if not (np.isfinite(lon) and np.isfinite(lat) and abs(lat) <= 90.0 + 1e-9):
        raise ChipError(name, f"its centre is not a place on Earth (lon {lon}, lat {lat}); check its CRS")
    return float(normalize_longitude(lon)), float(np.clip(lat, -90.0, 90.0))


def _open(source: Any):
    if hasattr(source, "open") and not isinstance(source, (str, PathLike)):
        return source.open()  # a rasterio MemoryFile
    return rasterio.open(source)


def resolve_chip_date(name: str, date: dt.date | str | None, tags: dict[str, str]) -> dt.date:
    """The date given by the caller, else the `date` tag, else the date in a v0 file name; else a ChipError."""
    if date is not None:
        return parse_date(date)
    if "date" in tags:
        try:
            return parse_date(tags["date"])
        except ValueError as error:
            raise ChipError(name, f"has a date tag that does not parse: {error}") from None
    from_name = date_from_filename(name)
    if from_name is None:
        raise ChipError(name, "has no date: no 'date' tag, no claytile_{MGRS}_{YYYYMMDD}_… name, and none was given")
    return from_name


__all__ = [
    "CHIP_NAME_PATTERN",
    "Chip",
    "ChipError",
    "chip_file_name",
    "chip_key",
    "date_from_filename",
    "read_chip",
    "resolve_chip_date",
]
