"""The datacube step: band files of several resolutions, CRSs and sensors → v0 chips on one grid.

Each band is one raster (a path or any URL GDAL reads). Every band is warped onto one target grid with GDAL's
warper (through rasterio's `WarpedVRT`); a band already on that grid comes through pixel for pixel. The stack is cut
into chips with the tiling windows and names of [`clay_hf.chipping.tiling`], the bands in v0 order and named in the
GeoTIFF band descriptions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os.path
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from ..data.bands import BAND_ALIASES, DECLARED_TAG, clay_band_name, file_scaling, scaling_record, to_v0_unit
from ..data.chips import ChipError, chip_file_name, chip_key, resolve_chip_date
from ..models.clay.configuration_clay import CLAY_V0_BAND_NAMES
from .tiling import (
    SOURCE_TAG,
    ChipReport,
    _refuse_overwriting_other_sources,
    _tile_id,
    chip_name,
    chip_windows,
    missing_reason,
    write_chip_file,
)

#: Sentinel-2 scene classification (SCL) classes masked as cloud or shadow: cloud shadow, cloud of medium and of
#: high probability, thin cirrus.
SCL_CLOUD_CLASSES: tuple[int, ...] = (3, 8, 9, 10)
#: SCL classes masked as nodata: no data, saturated or defective.
SCL_NODATA_CLASSES: tuple[int, ...] = (0, 1)


@dataclass(frozen=True)
class BandSource:
    """One band of the stack: the clay band `name`, the raster `href` that holds it, and its 1-based `band` index
    in that raster (None: the raster's only band; a raster of several bands then is an error). `nodata`, `scale`
    and `offset` are what a STAC item declares for it (`raster:bands`): `nodata` marks missing pixels on top of the
    raster's own nodata and mask; values become `value * scale + offset` (the physical value), written in v0's unit
    for the band ([`to_v0_unit`]: optical bands as reflectance × 10 000, so the v0 statistics apply). A band whose
    item declares no scale and offset takes its GeoTIFF's own ([`with_file_scaling`])."""

    name: str
    href: str
    band: int | None = None
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def declared(self) -> dict[str, float]:
        """What the item declared beyond the file (recorded in the chips' `clay_raster_bands` tag)."""
        values = {"nodata": self.nodata, "scale": self.scale, "offset": self.offset}
        defaults = {"nodata": None, "scale": 1.0, "offset": 0.0}
        declared = {key: value for key, value in values.items() if value != defaults[key] and key == "nodata"}
        return {**declared, **scaling_record(self.name, self.scale, self.offset)}

    def with_file_scaling(self, dataset: rasterio.DatasetReader, band: int) -> BandSource:
        """This source, with the scale and offset its raster's `band` declares when the item declares none."""
        if (self.scale, self.offset) != (1.0, 0.0):
            return self  # the item's declaration wins
        scale, offset = file_scaling(dataset, band)
        return dataclasses.replace(self, scale=scale, offset=offset)


@dataclass(frozen=True)
class TargetGrid:
    """The grid every band is warped onto: CRS, affine transform and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int


def band_sources(bands: Mapping[str, str | PathLike] | Sequence[BandSource]) -> list[BandSource]:
    """`{name or alias: path}` or BandSources → BandSources under clay names, in v0 order; a band given twice is an error."""
    given = bands.items() if isinstance(bands, Mapping) else [(b.name, b) for b in bands]
    by_name: dict[str, BandSource] = {}
    for name, value in given:
        source = value if isinstance(value, BandSource) else BandSource(name, str(value))
        clay_name = clay_band_name(name)
        if clay_name in by_name:
            raise ValueError(f"band {clay_name!r} is given twice: {by_name[clay_name].href} and {source.href}")
        by_name[clay_name] = dataclasses.replace(source, name=clay_name, href=str(source.href))
    if not by_name:
        raise ValueError("no bands given")
    return [by_name[name] for name in CLAY_V0_BAND_NAMES if name in by_name]


def target_grid(
    datasets: Sequence[rasterio.DatasetReader],
    crs: str | CRS | None = None,
    resolution: float | None = None,
) -> TargetGrid:
    """The grid of the finest band among those in a projected CRS, or that band's extent in `crs` / `resolution`.

    With `crs` or `resolution` (in the target CRS's units) the reference band's footprint is reprojected with
    GDAL's `calculate_default_transform`; with neither, or with values that equal the reference band's, the grid
    is the reference band's own.
    """
    projected = [dataset for dataset in datasets if dataset.crs is not None and dataset.crs.is_projected]
    if not projected:
        if crs is None:
            names = ", ".join(dataset.name for dataset in datasets)
            raise ValueError(f"no band is in a projected CRS ({names}); give the target CRS (--crs)")
        projected = [dataset for dataset in datasets if dataset.crs is not None]
    reference = min(projected, key=_pixel_area_m2)
    target_crs = CRS.from_user_input(crs) if crs is not None else reference.crs
    same_resolution = resolution is None or np.allclose(reference.res, (resolution, resolution))
    if target_crs == reference.crs and same_resolution:
        return TargetGrid(reference.crs, reference.transform, reference.width, reference.height)
    transform, width, height = calculate_default_transform(
        reference.crs, target_crs, reference.width, reference.height, *reference.bounds, resolution=resolution
    )
    return TargetGrid(target_crs, transform, width, height)


def _pixel_area_m2(dataset: rasterio.DatasetReader) -> float:
    _, metres_per_unit = dataset.crs.linear_units_factor if dataset.crs.is_projected else ("degree", 111_320.0)
    return abs(dataset.res[0] * dataset.res[1]) * metres_per_unit**2


def _working_dtype(dtypes: Sequence[str]) -> str:
    """float32 holds every 8/16-bit integer and float32 value exactly; wider types warp in float64."""
    return "float32" if all(np.dtype(d).itemsize <= 2 or np.dtype(d) == np.float32 for d in dtypes) else "float64"


class _BandReader:
    """Windows of one band on the target grid as floats, NaN where the band has no data (its nodata, mask, edge).

    Every band goes through GDAL's warper; a band already on the grid, or shifted from it by whole pixels, comes
    through unchanged whatever the resampling (tested).
    """

    def __init__(
        self,
        dataset: rasterio.DatasetReader,
        band: int,
        grid: TargetGrid,
        resampling: Resampling,
        dtype: str,
        stack: ExitStack,
        source: BandSource | None = None,
    ) -> None:
        self.band, self.grid, self.dtype = band, grid, dtype
        self.name = None if source is None else source.name
        self.scale, self.offset = (source.scale, source.offset) if source is not None else (1.0, 0.0)
        declared = {} if source is None or source.nodata is None else {"src_nodata": source.nodata}
        vrt = WarpedVRT(
            dataset, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
            resampling=resampling, dtype=dtype, nodata=np.nan, **declared,
        )  # fmt: skip
        self.vrt = stack.enter_context(vrt)

    def read(self, window: Window) -> np.ndarray:
        """(window.height, window.width) floats; NaN marks missing pixels, including those past the grid's edge."""
        out = np.full((int(window.height), int(window.width)), np.nan, dtype=self.dtype)
        inside = window.intersection(Window(0, 0, self.grid.width, self.grid.height))
        rows = slice(int(inside.row_off - window.row_off), int(inside.row_off - window.row_off + inside.height))
        cols = slice(int(inside.col_off - window.col_off), int(inside.col_off - window.col_off + inside.width))
        out[rows, cols] = self.vrt.read(self.band, window=inside)
        return to_v0_unit(out, self.name, self.scale, self.offset)


def _chip_dtype_and_nodata(
    datasets: Sequence[rasterio.DatasetReader], band_dtypes: Sequence[str], dtype: str
) -> tuple[str, float | None]:
    """The chips' dtype and nodata value: float32 with NaN (v0), or the sources' common dtype and nodata value."""
    if dtype != "source":
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise ValueError(f"dtype must be a float type or 'source', not {dtype!r}")
        return dtype, float("nan")
    out = np.result_type(*band_dtypes)
    if np.issubdtype(out, np.floating):
        return out.name, float("nan")
    declared = {dataset.nodata for dataset in datasets if dataset.nodata is not None}
    return out.name, declared.pop() if len(declared) == 1 else None


@dataclass
class _ChipPixels:
    pixels: np.ndarray  # (C, H, W) floats, NaN = nodata
    missing: np.ndarray  # (H, W): nodata, not cloud
    cloud: np.ndarray  # (H, W): cloud or shadow


def _stack_window(readers: Sequence[_BandReader], cloud_reader: _BandReader | None, window: Window) -> _ChipPixels:
    pixels = np.stack([reader.read(window) for reader in readers])  # (C, H, W)
    missing = np.isnan(pixels).any(axis=0)  # (H, W)
    cloud = np.zeros_like(missing)
    if cloud_reader is not None:
        scl = cloud_reader.read(window)
        cloud = np.isin(scl, SCL_CLOUD_CLASSES)
        missing |= np.isnan(scl) | np.isin(scl, SCL_NODATA_CLASSES)
        pixels[:, cloud | missing] = np.nan
    return _ChipPixels(pixels, missing & ~cloud, cloud)


def _to_chip_dtype(pixels: np.ndarray, dtype: str, nodata: float | None) -> np.ndarray | str:
    """Pixels in the chip dtype with nodata filled in, or the reason they cannot be written."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return pixels.astype(dtype)
    missing = np.isnan(pixels)
    if missing.any() and nodata is None:
        return "has nodata pixels but the sources declare no nodata value for integer chips (use --dtype float32)"
    info = np.iinfo(dtype)
    values = np.clip(np.rint(np.where(missing, 0, pixels)), info.min, info.max).astype(dtype)
    if nodata is not None and (values[~missing] == nodata).any():
        return f"has valid pixels equal to the nodata value {nodata:g} (use --dtype float32)"
    if nodata is not None:
        values[missing] = nodata
    return values


def _default_tile(hrefs: Sequence[str]) -> str:
    """The common prefix of the band file names, less a trailing band id (`T33TMT_20200701_B0` → `T33TMT20200701`)."""
    prefix = os.path.commonprefix([Path(chip_file_name(href)).stem for href in hrefs])  # noqa: RUF071 (characters, not paths)
    return _tile_id(re.sub(r"[_\-. ]*[Bb]?\d*$", "", prefix)) if prefix else "stack"


def make_datacube_chips(
    bands: Mapping[str, str | PathLike] | Sequence[BandSource],
    output_dir: str | PathLike,
    date: dt.date | str | None = None,
    chip_size: int = 512,
    crs: str | CRS | None = None,
    resolution: float | None = None,
    resampling: str | Resampling = "bilinear",
    cloud_mask: str | PathLike | None = None,
    max_nodata_fraction: float = 0.0,
    max_cloud_fraction: float = 0.0,
    dtype: str = "float32",
    tile: str | None = None,
    version: int = 2,
    source_date: dt.date | str | None = None,
) -> ChipReport:
    """Warp band files onto one grid and cut the stack into v0 chips.

    `bands` maps clay band names or sensor aliases (`B02`, `VV`, …) to rasters (paths or URLs GDAL reads), or is
    a list of [`BandSource`]. Any subset of the 13 v0 bands works; chips hold them in v0 order, named in the band
    descriptions. The grid is [`target_grid`]'s: the finest projected band's, unless `crs` / `resolution` say
    otherwise. Bands on that grid come through exactly; the others are resampled by GDAL with `resampling`
    (bilinear by default). A band's nodata value, mask or edge is nodata in the chip (NaN in float chips).
    `cloud_mask` is a Sentinel-2 SCL raster: cloud and shadow pixels (classes 3, 8, 9, 10) become nodata and
    count towards the cloud fraction, SCL's no-data and defective pixels (0, 1) towards the nodata fraction.
    Chips whose fractions exceed `max_nodata_fraction` or `max_cloud_fraction` are skipped, with the reason.
    The date is the sources' own: `source_date` (a STAC item's), else the first band's `date` tag, else the date
    of a v0 band file name; `date` (`--date`) is the fallback for sources without one. Chips record their stack's first band as their
    source (`clay_source`); a chip name already taken by a chip of another source is a ChipError before anything
    is written (as in [`make_chips`]).
    """
    sources = band_sources(bands)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    resampling = resampling if isinstance(resampling, Resampling) else Resampling[resampling]
    report = ChipReport()
    with ExitStack() as stack:
        datasets = [_open(source.href, stack) for source in sources]
        grid = target_grid(datasets, crs, resolution)
        chip_date = _stack_date(datasets, date, source_date)
        tile_id = _tile_id(tile) if tile else _default_tile([source.href for source in sources])
        indices = [_band_index(dataset, source) for dataset, source in zip(datasets, sources, strict=True)]
        sources = [
            source.with_file_scaling(dataset, index)
            for source, dataset, index in zip(sources, datasets, indices, strict=True)
        ]
        band_dtypes = [dataset.dtypes[index - 1] for dataset, index in zip(datasets, indices, strict=True)]
        working = _working_dtype(band_dtypes)
        out_dtype, nodata = _chip_dtype_and_nodata(datasets, band_dtypes, dtype)
        readers = [
            _BandReader(dataset, index, grid, resampling, working, stack, source)
            for dataset, index, source in zip(datasets, indices, sources, strict=True)
        ]
        cloud_reader = None
        if cloud_mask is not None:
            scl = _open(str(cloud_mask), stack)
            cloud_reader = _BandReader(scl, 1, grid, Resampling.nearest, "float32", stack)
        windows = list(chip_windows(grid.height, grid.width, chip_size))
        chip_files = [chip_name(tile_id, chip_date, counter, version) for counter in range(len(windows))]
        _refuse_overwriting_other_sources(sources[0].href, output, chip_files)  # the stack is named by its first band
        for window, chip_file in zip(windows, chip_files, strict=True):
            label = f"window row={window.row_off} col={window.col_off}"
            try:
                chip = _stack_window(readers, cloud_reader, window)
            except RasterioError as error:
                report.skipped.append((label, f"cannot be read ({error})"))
                continue
            reason = _skip_reason(chip, max_nodata_fraction, max_cloud_fraction)
            values = _to_chip_dtype(chip.pixels, out_dtype, nodata) if reason is None else reason
            if isinstance(values, str):
                report.skipped.append((label, values))
                continue
            path = output / chip_file
            _write_chip(path, values, grid, window, nodata, sources, chip_date)
            report.written.append(path)
    return report


def _band_index(dataset: rasterio.DatasetReader, source: BandSource) -> int:
    """The 1-based index of `source` in its raster; a raster of several bands needs the index said."""
    if source.band is None:
        if dataset.count != 1:
            raise ChipError(
                source.href, f"has {dataset.count} bands: say which is {source.name!r} ({source.name}=PATH#N)"
            )
        return 1
    if not 1 <= source.band <= dataset.count:
        raise ChipError(source.href, f"has {dataset.count} band(s); band {source.band} was asked for ({source.name})")
    return source.band


def _stack_date(
    datasets: Sequence[rasterio.DatasetReader], date: dt.date | str | None, source_date: dt.date | str | None = None
) -> dt.date:
    """The sources' own date (`source_date`, else the first `date` tag of a band, else a v0 band file name), else
    the fallback `date`; else a ChipError naming the bands."""
    if source_date is not None:
        return resolve_chip_date(datasets[0].name, source_date, {})
    tagged = next((dataset for dataset in datasets if "date" in dataset.tags()), datasets[0])
    try:
        return resolve_chip_date(tagged.name, date, tagged.tags())
    except ChipError:
        names = ", ".join(dataset.name for dataset in datasets)
        raise ChipError(names, "no date: no band has a 'date' tag and none was given (--date)") from None


def _open(href: str, stack: ExitStack) -> rasterio.DatasetReader:
    try:
        dataset = stack.enter_context(rasterio.open(href))
    except (RasterioError, OSError) as error:
        raise ChipError(href, f"cannot be read ({error})") from error
    if dataset.crs is None:
        raise ChipError(href, "has no CRS, so it cannot be placed on the chip grid")
    return dataset


def _skip_reason(chip: _ChipPixels, max_nodata_fraction: float, max_cloud_fraction: float) -> str | None:
    """Why a window is skipped (counts of pixels, never a rounded share), or None."""
    total = chip.missing.size
    reason = missing_reason(chip.missing[None], total, max_nodata_fraction)
    clouds = int(np.count_nonzero(chip.cloud))
    if reason is None and clouds > max_cloud_fraction * total:
        reason = (
            f"{clouds} of {total} pixels cloud or shadow ({100 * clouds / total:.3g}%, "
            f"limit {100 * max_cloud_fraction:.3g}%)"
        )
    return reason


def _write_chip(
    path: Path,
    values: np.ndarray,
    grid: TargetGrid,
    window: Window,
    nodata: float | None,
    sources: Sequence[BandSource],
    date: dt.date,
) -> None:
    count, height, width = values.shape
    profile = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=values.dtype.name, crs=grid.crs,
        transform=rasterio.windows.transform(window, grid.transform), compress="deflate", nodata=nodata,
    )  # fmt: skip
    tags = {"date": date.isoformat(), SOURCE_TAG: chip_key(sources[0].href)}
    declared = {source.name: source.declared for source in sources if source.declared}
    if declared:
        tags[DECLARED_TAG] = json.dumps(declared)
    write_chip_file(path, values, profile, tags, [source.name for source in sources])


__all__ = [
    "BAND_ALIASES",
    "SCL_CLOUD_CLASSES",
    "SCL_NODATA_CLASSES",
    "BandSource",
    "TargetGrid",
    "band_sources",
    "clay_band_name",
    "make_datacube_chips",
    "target_grid",
]
