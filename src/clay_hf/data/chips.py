"""Reading one Clay chip: a multiband GeoTIFF with its date, place and footprint."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..models.clay.configuration_clay import CLAY_V0_BAND_NAMES
from ..models.clay.image_processing_clay import parse_date
from ..utils.errors import ClayUserError
from ..utils.geometry import normalize_longitude
from .bands import apply_scaling, declared_scaling, described_band_names, scaled_dtype

#: v0 chip names: claytile_{MGRS}_{YYYYMMDD}_v{NN}_{counter:04d}.tif
CHIP_NAME_PATTERN = re.compile(r"claytile_(?P<tile>[^_/]+)_(?P<date>\d{8})_v(?P<version>\d+)_(?P<counter>\d+)\.tiff?$")


class ChipError(ClayUserError, ValueError):
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
    #: (C, H, W) True where a value is missing: NaN, ±inf, the file's nodata value or its mask (internal, `.msk`,
    #: alpha band); None when none is. After a layout's fill it marks the values that were filled.
    missing: np.ndarray | None = None
    #: the file's own nodata value (None when it declares none)
    nodata: float | None = None
    #: the band of each channel of `pixels`, when known (from a layout, `--bands` or the band descriptions)
    band_names: list[str] | None = None
    #: the fraction of values that were missing when read (before any fill)
    nodata_fraction: float = 0.0
    #: (height, width) of the chip's grid in pixels
    size: tuple[int, int] | None = None

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
            "nodata_fraction": self.nodata_fraction,
            "bad_chip": "",
        }


@dataclass(frozen=True)
class ChipLayout:
    """What every chip of a run must give: the bands the model reads (in the model's order), the size and the
    dtype the pixels travel in, and what becomes of missing pixels. It comes from the model and its processor
    (see [`ChipLayout.for_model`]), never from whichever chip is read first.

    Args:
        bands: the bands the model reads, in its order; each chip's bands are picked from it by name.
        size: (height, width) of every chip; None accepts any size (fine-tuning images, scenes to predict).
        dtype: the dtype pixels travel in; a chip of a float dtype, or of an integer dtype when `dtype` is a float,
            is converted; any other dtype (complex, or a wider integer into a narrower one) is a bad chip.
        chip_bands: the names of the chips' bands in the chips' order (`--bands`); by default each chip's band
            names (see [`chip_band_names`]).
        fill_values: raw per-band values (in `bands` order) that replace missing pixels; None makes a chip with
            any missing pixel bad.
    """

    bands: tuple[str, ...] = tuple(CLAY_V0_BAND_NAMES)
    size: tuple[int, int] | None = (512, 512)
    dtype: str = "float32"
    chip_bands: tuple[str, ...] | None = None
    fill_values: tuple[float, ...] | None = None

    @classmethod
    def for_model(
        cls,
        config: Any,
        image_size: int | Sequence[int] | None = None,
        chip_bands: Sequence[str] | None = None,
        fill_values: Sequence[float] | None = None,
        dtype: str = "float32",
    ) -> ChipLayout:
        """The layout a model reads: its `band_names`, and `image_size` (a side, or (height, width), each a multiple
        of its patch size; the model's own image size by default)."""
        size = image_size or config.image_size
        sides = [size] if isinstance(size, int) else list(size)  # a side, or (height, width)
        height, width = sides[0], sides[-1]
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(
                f"image size {height}×{width} is not a multiple of the model's patch size {config.patch_size}."
            )
        lacking = [band for band in config.band_names if chip_bands is not None and band not in chip_bands]
        if lacking:
            raise ValueError(
                f"the chips' bands {list(chip_bands)} lack {lacking}, which the model reads ({config.band_names})."
            )
        return cls(
            bands=tuple(config.band_names),
            size=(height, width),
            dtype=dtype,
            chip_bands=None if chip_bands is None else tuple(chip_bands),
            fill_values=None if fill_values is None else tuple(float(v) for v in fill_values),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the pixels every record holds."""
        if self.size is None:
            raise ValueError("a layout that accepts any chip size has no fixed shape")
        return (len(self.bands), *self.size)


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
    layout: ChipLayout | None = None,
) -> Chip:
    """Read a chip from a local path, any URL GDAL reads (`s3://`, `https://`, `/vsi…`) or an open `MemoryFile`.

    The date is the file's `date` tag, else the date in a v0 file name, else `date` (the fallback, `--date`). With
    `num_bands` or `size` (height, width), a chip that differs is rejected. The chip keeps the file's nodata:
    `missing` marks the missing pixels (see [`read_masked_pixels`]). An alpha band is the file's mask, not a band.
    A band whose file declares a scale or offset is read in v0's unit ([`read_chip_pixels`]).

    With a `layout`, the chip must fit it: the layout's bands are picked by name in the layout's order, its size
    and a convertible dtype are required, and missing values are filled with the layout's `fill_values` or, without
    them, make the chip bad. Every problem raises [`ChipError`] naming the file.
    """
    name = source_url or (str(source) if isinstance(source, (str, PathLike)) else str(source.name))
    if layout is not None and layout.size is not None:
        size = layout.size
    try:
        with _open(source) as dataset:
            data_bands = data_band_indexes(dataset)
            if num_bands is not None and len(data_bands) != num_bands:
                raise ChipError(name, f"has {len(data_bands)} bands, expected {num_bands}")
            if size is not None and (dataset.height, dataset.width) != tuple(size):
                raise ChipError(name, f"is {dataset.height}×{dataset.width} pixels, expected {size[0]}×{size[1]}")
            if dataset.crs is None:
                raise ChipError(name, "has no CRS, so its place is unknown")
            tags = dataset.tags()
            chip_date = resolve_chip_date(name, date, tags)
            band_names, indexes = select_bands(name, dataset, layout)
            lon, lat = _centre_lonlat(name, dataset)
            pixels, missing, scaled = read_chip_pixels(dataset, indexes or data_bands, band_names, read_pixels)
            if layout is not None:
                read_dtype = scaled_dtype(dataset.dtypes[0]) if scaled else np.dtype(dataset.dtypes[0])
                _check_dtype(name, read_dtype.name, layout.dtype)
            bounds = dataset.bounds
            epsg = dataset.crs.to_epsg()
            crs = dataset.crs.to_wkt()
            transform = tuple(dataset.transform)[:6]
            nodata = None if scaled else dataset.nodata  # a value in the stored unit is not one in v0's
            grid_size = (dataset.height, dataset.width)
    except ChipError:
        raise
    except (RasterioError, OSError) as error:
        raise ChipError(name, f"cannot be read ({error})") from error
    chip = Chip(
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
        missing=missing,
        nodata=None if nodata is None else float(nodata),
        band_names=band_names,
        nodata_fraction=0.0 if missing is None else float(missing.mean()),
        size=grid_size,
    )
    return chip if layout is None or pixels is None else fit_to_layout(chip, layout)


def fit_to_layout(chip: Chip, layout: ChipLayout) -> Chip:
    """Fill (or refuse) missing values and convert the pixels to the layout's dtype; raises ChipError. The one fill
    of every reader: each missing value becomes its band's fill value; `chip.missing` then marks what was filled."""
    if chip.missing is not None and layout.fill_values is None:
        raise nodata_error(chip)
    chip.pixels = fill_missing(chip.source_url, chip.pixels, chip.missing, layout)
    return chip


def fill_missing(name: str, pixels: np.ndarray, missing: np.ndarray | None, layout: ChipLayout) -> np.ndarray:
    """`pixels` (C, H, W) in the layout's bands with each `missing` value replaced by its band's fill value, in the
    layout's dtype; raises ChipError naming `name` when the values cannot be held in that dtype."""
    target = np.dtype(layout.dtype)
    filled = pixels
    if missing is not None:
        fill = np.asarray(layout.fill_values, dtype=np.float64)[:, None, None]  # (C, 1, 1)
        filled = np.where(missing, fill, pixels)
        if np.issubdtype(target, np.integer):
            filled = np.rint(filled)
            info = np.iinfo(target)
            if filled.min() < info.min or filled.max() > info.max:
                raise ChipError(name, f"has a fill value outside the range of {target}")
    converted = filled.astype(target, copy=False)
    if converted.dtype != pixels.dtype and np.issubdtype(target, np.floating) and not np.isfinite(converted).all():
        raise ChipError(name, f"has values too large for {target}")
    return converted


def nodata_error(chip: Chip) -> ChipError:
    """The error of a chip with missing values: "NAME: N% nodata (…)"."""
    count, total = int(chip.missing.sum()), chip.missing.size
    return ChipError(
        chip.source_url,
        f"{100 * count / total:.3g}% nodata ({count} of {total} values are NaN, ±inf or the file's nodata value or "
        "mask; a fill value would use the chip)",
    )


def data_band_indexes(dataset: Any) -> list[int]:
    """The 1-based indexes of a file's data bands: all but an alpha band (which is the file's mask)."""
    interpretations = list(dataset.colorinterp or [])
    return [index for index in range(1, dataset.count + 1)
            if index > len(interpretations) or interpretations[index - 1] != ColorInterp.alpha]  # fmt: skip


def select_bands(
    name: str, dataset: Any, layout: ChipLayout | None
) -> tuple[list[str | None] | None, list[int] | None]:
    """(the chip's band names — the layout's, in its order, with a layout —, the 1-based file indexes of the
    layout's bands in the layout's order, None without a layout) of an open file; raises ChipError."""
    data_bands = data_band_indexes(dataset)
    names, positions = _band_selection(name, len(data_bands), [dataset.descriptions[i - 1] for i in data_bands], layout)
    return names, None if positions is None else [data_bands[position - 1] for position in positions]


def _band_selection(
    name: str, count: int, descriptions: Sequence[str | None], layout: ChipLayout | None
) -> tuple[list[str | None] | None, list[int] | None]:
    """(the chip's band names, the 1-based indexes of the layout's bands in the layout's order)."""
    names = chip_band_names(name, count, descriptions, layout)
    if layout is None:
        return names, None
    if names is None:
        raise ChipError(
            name,
            f"has {count} bands and no band names in its band descriptions, so its bands are unknown: "
            f"the model reads {list(layout.bands)}; name the chip's bands with --bands (a 13-band chip is read in "
            "v0 order)",
        )
    if len(names) != count:
        raise ChipError(name, f"has {count} bands, but {len(names)} band names were given ({names})")
    lacking = [band for band in layout.bands if band not in names]
    if lacking:
        shown = [band or "(unnamed)" for band in names]
        raise ChipError(
            name, f"lacks band(s) {lacking} that the model reads (the chip's bands: {shown}; the model's: "
            f"{list(layout.bands)})"
        )  # fmt: skip
    twice = sorted({band for band in layout.bands if names.count(band) > 1})
    if twice:
        raise ChipError(name, f"names band(s) {twice} more than once (the chip's bands: {names})")
    return [names[names.index(band)] for band in layout.bands], [names.index(band) + 1 for band in layout.bands]


def conform_chip(chip: Chip, descriptions: Sequence[str | None], layout: ChipLayout) -> Chip:
    """A chip read with all its bands from elsewhere than a GeoTIFF (a Clay shard record), made to fit `layout`
    exactly as `read_chip(..., layout=)` makes a file fit: bands picked by name, size and dtype checked, NaN, ±inf
    and the chip's nodata value missing (filled or the chip bad). Raises ChipError."""
    band_names, channels = layout_channels(chip.source_url, chip.pixels.shape, chip.pixels.dtype, descriptions, layout)
    if channels != list(range(chip.pixels.shape[0])):  # the chip's bands in another order, or more of them
        chip.pixels = chip.pixels[channels]  # (C', H, W) in the layout's order
    chip.band_names = band_names
    return fit_layout_bands(chip, layout)


def layout_channels(
    name: str, shape: Sequence[int], dtype: np.dtype | str, descriptions: Sequence[str | None], layout: ChipLayout
) -> tuple[list[str], list[int]]:
    """(the layout's band names, the 0-based channels of a chip of `shape` (C, H, W) that hold them, in the
    layout's order): raises ChipError when the chip's size, bands or dtype cannot fit `layout`."""
    count, height, width = shape
    if layout.size is not None and (height, width) != tuple(layout.size):
        raise ChipError(name, f"is {height}×{width} pixels, expected {layout.size[0]}×{layout.size[1]}")
    band_names, indexes = _band_selection(name, count, descriptions, layout)
    _check_dtype(name, np.dtype(dtype).name, layout.dtype)
    return band_names, [index - 1 for index in indexes]


def fit_layout_bands(
    chip: Chip,
    layout: ChipLayout,
    ranges: Sequence[tuple[float, float]] | None = None,
    stored: np.ndarray | None = None,
) -> Chip:
    """A chip whose pixels are already the layout's bands, in its order: NaN, ±inf, the chip's nodata value and
    the `stored` mask (the missing pixels a shard recorded, (C, H, W) in the same bands) marked missing (filled or
    the chip bad), the pixels converted to the layout's dtype; `ranges` as [`missing_values`]. Raises ChipError."""
    missing = missing_values(chip.pixels, chip.nodata, ranges)
    if stored is not None and stored.any():
        missing = stored if missing is None else missing | stored
    chip.missing = missing
    chip.nodata_fraction = 0.0 if missing is None else np.count_nonzero(missing) / missing.size
    return fit_to_layout(chip, layout)


def missing_values(
    pixels: np.ndarray, nodata: float | None, ranges: Sequence[tuple[float, float]] | None = None
) -> np.ndarray | None:
    """(C, H, W) True where a value is NaN, ±inf or `nodata`; None when none is. Each band's minimum and maximum
    (which NaN propagates to) are looked at first, so a clean chip costs two reductions and no mask; `ranges`
    gives them when the caller already has them (per band, (min, max) of the same values)."""
    if pixels.size == 0:
        return None
    floating = np.issubdtype(pixels.dtype, np.inexact)
    check_nodata = nodata is not None and not np.isnan(nodata)
    if ranges is None:
        low, high = pixels.min(axis=(1, 2)), pixels.max(axis=(1, 2))  # (C,)
    else:
        low, high = np.array(ranges, dtype=np.float64).reshape(-1, 2).T  # (C,) each
    suspect = np.zeros(len(pixels), dtype=bool)
    if floating:
        suspect |= ~(np.isfinite(low) & np.isfinite(high))
    if check_nodata:
        suspect |= (low <= nodata) & (nodata <= high)
    if not suspect.any():
        return None
    missing = np.zeros(pixels.shape, dtype=bool)
    for channel in np.flatnonzero(suspect):
        band = pixels[channel]
        if floating:
            missing[channel] = ~np.isfinite(band)
        if check_nodata:
            missing[channel] |= band == nodata
    return missing if missing.any() else None


def chip_band_names(
    name: str, count: int, descriptions: Sequence[str | None], layout: ChipLayout | None = None
) -> list[str | None] | None:
    """The names of a chip's `count` bands in its order: the layout's `chip_bands` (`--bands`), else the band
    descriptions (clay names, aliases such as `B02` or `VV`, any Sentinel-2 band, the model's own band names; an
    unnamed band is None and never picked), else — only when no description names a band — the v0 order for 13
    bands, else the layout's own bands when the chip has exactly that many; None when unknown.

    With a layout (a model reads the chip), descriptions that name no known band make the chip bad: a ChipError
    listing them. Without one, such a description is kept as it is.
    """
    if layout is not None and layout.chip_bands is not None:
        return list(layout.chip_bands)
    extra = tuple(layout.bands) if layout is not None else ()
    described, unknown = described_band_names(list(descriptions)[:count], extra)
    if unknown and layout is not None:
        raise ChipError(
            name,
            f"has band descriptions that name no known band: {unknown} (known: the model's bands {list(extra)}, "
            "their aliases such as B02, B8A, VV, DEM, and every Sentinel-2 band); name the chip's bands with --bands",
        )
    if any(band is not None for band in described) or unknown:
        texts = [(text or "").strip() for text in descriptions]
        return [band if band is not None or not texts[i] else texts[i] for i, band in enumerate(described)]
    if count == len(CLAY_V0_BAND_NAMES):
        return list(CLAY_V0_BAND_NAMES)
    if layout is not None and count == len(layout.bands):
        return list(layout.bands)
    return None


def file_band_names(source: str | PathLike) -> list[str] | None:
    """The band names of a chip file by the one naming rule (descriptions, aliases included, canonical names), or
    None when its descriptions name no band; raises ChipError when it cannot be read."""
    name = os.fspath(source)
    try:
        with rasterio.open(source) as dataset:
            bands = data_band_indexes(dataset)
            descriptions = [dataset.descriptions[index - 1] for index in bands]
    except (RasterioError, OSError) as error:
        raise ChipError(name, f"cannot be read ({error})") from error
    described, _ = described_band_names(descriptions)
    if not any(band is not None for band in described):
        return None
    return chip_band_names(name, len(bands), descriptions)


def _check_dtype(name: str, dtype: str, target: str) -> None:
    """A float chip converts to a float layout, any integer chip to a float layout, an integer chip to an integer
    layout only without loss; anything else (complex, a wider integer) is a bad chip."""
    source, wanted = np.dtype(dtype), np.dtype(target)
    real = np.issubdtype(source, np.integer) or np.issubdtype(source, np.floating)
    if real and (np.issubdtype(wanted, np.floating) or np.can_cast(source, wanted, "safe")):
        return
    raise ChipError(name, f"has pixels of dtype {dtype}, which cannot be read as {target}")


def read_masked_pixels(
    dataset: Any, indexes: Sequence[int], window: Window | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The one definition of a missing pixel, for every reader of a file: (pixels (C, H, W) of the 1-based band
    `indexes` in the file's dtype, the missing-value mask or None). A value is missing when it is NaN or ±inf, the
    band's nodata value, or outside the file's GDAL mask (an internal mask, a `.msk` sidecar, an alpha band, a
    per-dataset mask). A `window` reaching past the file's edge reads the part outside as missing."""
    chosen = list(indexes)
    flags = [dataset.mask_flag_enums[i - 1] for i in chosen]
    inside = window is None or (
        window.row_off >= 0 and window.col_off >= 0
        and window.row_off + window.height <= dataset.height and window.col_off + window.width <= dataset.width
    )  # fmt: skip
    if inside and all(band_flags == [MaskFlags.all_valid] for band_flags in flags):
        pixels = dataset.read(chosen, window=window)
        missing = None
    else:
        masked = dataset.read(chosen, window=window, boundless=not inside, masked=True)
        pixels, missing = np.ma.getdata(masked), np.ma.getmaskarray(masked)
    if np.issubdtype(pixels.dtype, np.inexact):
        nonfinite = ~np.isfinite(pixels)
        missing = nonfinite if missing is None else missing | nonfinite
    if missing is not None and not missing.any():
        missing = None
    return pixels, missing


def read_chip_pixels(
    dataset: Any,
    indexes: Sequence[int],
    names: Sequence[str | None] | None,
    read_pixels: bool = True,
    window: Window | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
    """The one pixel reader of chips and scenes: (pixels (C, H, W) of the 1-based band `indexes`, named `names`,
    the missing-value mask ([`read_masked_pixels`]), whether a band was rescaled). A band whose GeoTIFF declares a
    scale or offset is read in v0's unit, as the chipping steps write it ([`apply_scaling`]); the others keep the
    file's values and dtype. Without `read_pixels`, only whether a band would be rescaled."""
    scaling = declared_scaling(dataset, indexes, names)
    if not read_pixels:
        return None, None, bool(scaling)
    pixels, missing = read_masked_pixels(dataset, indexes, window)
    return apply_scaling(pixels, scaling), missing, bool(scaling)


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
    """A chip's date, the same order everywhere: the file's own `date` tag, else the date in a v0 file name, else
    `date` (the caller's fallback, `--date`); else a ChipError."""
    if "date" in tags:
        try:
            return parse_date(tags["date"])
        except ValueError as error:
            raise ChipError(name, f"has a date tag that does not parse: {error}") from None
    from_name = date_from_filename(name)
    if from_name is not None:
        return from_name
    if date is not None:
        return parse_date(date)
    raise ChipError(
        name, "has no date: no 'date' tag, no claytile_{MGRS}_{YYYYMMDD}_… name, and none was given (--date)"
    )


__all__ = [
    "CHIP_NAME_PATTERN",
    "Chip",
    "ChipError",
    "ChipLayout",
    "chip_band_names",
    "chip_file_name",
    "chip_key",
    "conform_chip",
    "data_band_indexes",
    "date_from_filename",
    "file_band_names",
    "fill_missing",
    "fit_layout_bands",
    "fit_to_layout",
    "layout_channels",
    "missing_values",
    "nodata_error",
    "read_chip",
    "read_masked_pixels",
    "resolve_chip_date",
    "select_bands",
]
