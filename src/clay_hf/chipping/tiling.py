"""Cutting rasters into v0-format chips, and synthetic v0 chips for tests and the demo."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import from_origin
from rasterio.windows import Window

from ..data.bands import DECLARED_TAG, apply_scaling, declared_scaling, file_scaling, scaling_record
from ..data.chips import ChipError, chip_file_name, chip_key, data_band_indexes, read_masked_pixels, resolve_chip_date
from ..models.clay.image_processing_clay import CLAY_V0_BAND_STATISTICS
from ..utils.errors import OutputError
from ..utils.outputs import atomic_file, make_folder


def chip_name(tile: str, date: dt.date, counter: int, version: int = 2) -> str:
    """The v0 name `claytile_{tile}_{YYYYMMDD}_v{NN}_{counter:04d}.tif`."""
    return f"claytile_{tile}_{date:%Y%m%d}_v{version:02d}_{counter:04d}.tif"


@dataclass
class ChipReport:
    """What a tiling run wrote and skipped (with the reason for each skipped window)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"wrote {len(self.written)} chips, skipped {len(self.skipped)}"


def chip_windows(height: int, width: int, chip_size: int) -> Iterator[Window]:
    """Row-major chip windows covering the raster; edge windows reach past it (read boundless, as nodata)."""
    for row in range(0, height, chip_size):
        for col in range(0, width, chip_size):
            yield Window(col, row, chip_size, chip_size)


#: Tag naming the raster a chip was cut from, so that a chip of another raster is never overwritten.
SOURCE_TAG = "clay_source"


def make_chips(
    source: str | PathLike,
    output_dir: str | PathLike,
    chip_size: int = 512,
    date: dt.date | str | None = None,
    tile: str | None = None,
    version: int = 2,
    max_nodata_fraction: float = 0.0,
    dtype: str = "float32",
) -> ChipReport:
    """Cut a multiband GeoTIFF (any CRS, any size, with or without nodata) into v0 chips.

    Chips keep the source CRS, are deflate-compressed, carry a `date` tag (the source's own `date` tag, else a v0
    file name's date, else `date`), the source's name (`clay_source`) and v0 names. A pixel is missing by the data
    reader's one definition ([`read_masked_pixels`]: nodata value, NaN, ±inf, the GDAL mask) or when it lies past
    the raster's edge; a chip whose share of missing pixels exceeds `max_nodata_fraction` is skipped, with the
    count. Missing pixels are written as the source's nodata value, else NaN (float chips) or a value the chip does
    not hold (integer chips, else an internal mask), so that every reader finds them again. Each chip is written
    atomically and read back before it gets its name ([`write_chip_file`]); a full disk is an OutputError naming
    the chip. Before writing, a ChipError is raised if a chip name is already taken by a chip of another source
    (same tile id and date): nothing is overwritten. `dtype` is "float32" (v0) or "source". A band whose GeoTIFF
    declares a scale or offset is written in v0's unit in float chips (recorded in the `clay_raster_bands` tag);
    integer chips keep the stored values and carry the scale and offset, which every chip reader applies.
    """
    output = make_folder(output_dir)
    name = str(source)
    report = ChipReport()
    try:
        with rasterio.open(source) as raster:
            chip_date = resolve_chip_date(name, date, raster.tags())
            tile_id = _tile_id(tile or Path(chip_file_name(name)).stem)
            out_dtype = raster.dtypes[0] if dtype == "source" else dtype
            windows = list(chip_windows(raster.height, raster.width, chip_size))
            names = [chip_name(tile_id, chip_date, counter, version) for counter in range(len(windows))]
            _refuse_overwriting_other_sources(name, output, names)
            bands = data_band_indexes(raster)
            descriptions = [raster.descriptions[index - 1] for index in bands]
            scaling = declared_scaling(raster, bands, descriptions)
            # Float chips are written in v0's unit; integer chips keep the stored values and carry the scale.
            rescale = bool(scaling) and np.dtype(out_dtype).kind == "f"
            carried = None if rescale or not scaling else [file_scaling(raster, band) for band in bands]
            for window, chip_file in zip(windows, names, strict=True):
                pixels, missing = read_masked_pixels(raster, bands, window)  # past the edge: missing
                label = f"{name} window row={window.row_off} col={window.col_off}"
                reason = missing_reason(missing, chip_size * chip_size, max_nodata_fraction)
                if reason is not None:
                    report.skipped.append((label, reason))
                    continue
                pixels = apply_scaling(pixels.astype(out_dtype), scaling if rescale else {})
                # Rescaled values are in another unit than the source's nodata value: mark missing pixels as NaN.
                nodata, valid = _mark_missing(pixels, missing, None if rescale else raster.nodata)
                profile = dict(
                    driver="GTiff",
                    width=chip_size,
                    height=chip_size,
                    count=len(bands),
                    dtype=out_dtype,
                    crs=raster.crs,
                    transform=raster.window_transform(window),
                    compress="deflate",
                    nodata=nodata,
                )
                tags = {"date": chip_date.isoformat(), SOURCE_TAG: chip_key(name)}
                if rescale:
                    tags[DECLARED_TAG] = json.dumps({band or f"band {position + 1}": scaling_record(band, scale, offset)
                                                     for position, (band, scale, offset) in scaling.items()})  # fmt: skip
                named = descriptions if any(descriptions) else None
                report.written.append(write_chip_file(output / chip_file, pixels, profile, tags, named, valid, carried))
    except (RasterioError, OSError) as error:
        raise ChipError(name, f"cannot be read ({error})") from error
    return report


def missing_reason(missing: np.ndarray | None, total: int, limit: float) -> str | None:
    """Why a chip with `missing` values (C, H, W; a pixel is missing when any band is) is skipped under `limit`,
    the share of missing pixels allowed; None when it is kept. The count is exact, so a few pixels over a limit of
    0 never read as "0.0%"."""
    count = 0 if missing is None else int(np.count_nonzero(missing.any(axis=0)))
    if count <= limit * total:
        return None
    return f"{count} of {total} pixels missing ({100 * count / total:.3g}% nodata, limit {100 * limit:.3g}%)"


def write_chip_file(
    path: Path,
    pixels: np.ndarray,
    profile: dict,
    tags: dict[str, str],
    descriptions: Sequence[str | None] | None = None,
    valid: np.ndarray | None = None,
    scaling: Sequence[tuple[float, float]] | None = None,
) -> Path:
    """Write one chip atomically (the one chip writer of the tiler and the datacube step): under a temporary name,
    read back whole (GDAL does not raise its write errors at close), fsynced, then renamed. `valid` (H, W), when
    given, is written as the chip's internal mask, `scaling` as its bands' (scale, offset). A write error (a full
    disk) is an OutputError naming `path`."""
    with atomic_file(path, verify=verify_geotiff) as temporary:
        try:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(temporary, "w", **profile) as chip:
                chip.write(pixels)
                if valid is not None:
                    chip.write_mask(valid)
                chip.update_tags(**tags)
                if descriptions:
                    chip.descriptions = tuple(descriptions)
                if scaling:
                    chip.scales, chip.offsets = zip(*scaling, strict=True)
        except RasterioError as error:
            raise OutputError(path, error) from error
    return path


def verify_geotiff(path: Path) -> None:
    """Read a GeoTIFF back whole (every band and mask block); raises when it is truncated or damaged."""
    with rasterio.open(path) as dataset:
        dataset.read()
        dataset.read_masks()


def _refuse_overwriting_other_sources(source: str, output: Path, names: list[str]) -> None:
    """A ChipError if one of `names` in `output` is a chip cut from another source (or of unknown origin)."""
    own = chip_key(source)
    for chip_file in names:
        path = output / chip_file
        if not path.exists():
            continue
        try:
            with rasterio.open(path) as existing:
                origin = existing.tags().get(SOURCE_TAG)
        except RasterioError:
            origin = None
        if origin != own:
            raise ChipError(
                source,
                f"would overwrite {path}, cut from {origin or 'another source'}: both give the same tile id and "
                "date; give each source its own --tile, or another --output_dir",
            )


def _mark_missing(
    pixels: np.ndarray, missing: np.ndarray | None, nodata: float | None
) -> tuple[float | None, np.ndarray | None]:
    """Write the missing pixels (any band) of `pixels` as a value the chip declares: (its nodata value, its mask
    (H, W) uint8 or None). The source's nodata value, else NaN (floats), else the dtype's maximum or minimum when
    the chip does not hold it, else an internal mask."""
    if missing is None:
        return nodata, None
    pixel_missing = missing.any(axis=0)  # (H, W)
    if nodata is not None and _holds(pixels.dtype, nodata):
        pixels[:, pixel_missing] = nodata
        return nodata, None
    if np.issubdtype(pixels.dtype, np.floating):
        pixels[:, pixel_missing] = np.nan
        return float("nan"), None
    info = np.iinfo(pixels.dtype)
    valid = pixels[:, ~pixel_missing]
    free = [value for value in (info.max, info.min) if not (valid == value).any()]
    if free:
        pixels[:, pixel_missing] = free[0]
        return float(free[0]), None
    return nodata, np.where(pixel_missing, 0, 255).astype(np.uint8)


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether `dtype` holds `value` exactly (NaN only in floats)."""
    if np.issubdtype(dtype, np.floating):
        return True
    info = np.iinfo(dtype)
    return bool(np.isfinite(value) and float(value).is_integer() and info.min <= value <= info.max)


def _tile_id(text: str) -> str:
    """A chip-name-safe tile id (no underscores: v0 names are split on them)."""
    return re.sub(r"[^A-Za-z0-9]", "", text) or "tile"


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic v0 chips
# ---------------------------------------------------------------------------------------------------------------------

#: Per-class multipliers of the Sentinel-2 reflectance (blue … swir22): water, vegetation, bare soil, built-up.
SYNTHETIC_CLASS_SIGNATURES: dict[str, list[float]] = {
    "water": [0.6, 0.5, 0.35, 0.3, 0.25, 0.2, 0.15, 0.15, 0.08, 0.06],
    "vegetation": [0.35, 0.55, 0.3, 0.9, 1.6, 1.9, 2.1, 2.1, 1.0, 0.6],
    "bare": [0.9, 1.0, 1.2, 1.25, 1.3, 1.3, 1.35, 1.35, 1.6, 1.5],
    "urban": [1.3, 1.3, 1.3, 1.2, 1.1, 1.05, 1.0, 1.0, 1.1, 1.1],
}


def smooth_field(rng: np.random.Generator, size: int, scale: int = 8) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (size, size), for synthetic data: a (scale + 1)² grid of uniform
    noise from `rng`, upsampled bilinearly (a larger `scale`: finer detail). Textures the synthetic chips' bands and
    places water in `clay_hf.finetuning.synthetic`."""
    coarse = rng.random((scale + 1, scale + 1))
    axis = np.linspace(0, scale, size)
    low = np.floor(axis).astype(int).clip(0, scale - 1)
    frac = axis - low
    rows = coarse[low] * (1 - frac)[:, None] + coarse[low + 1] * frac[:, None]  # (size, scale+1)
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def synthetic_chip(rng: np.random.Generator, size: int, label: str) -> np.ndarray:
    """13 bands of plausible values (S2 reflectance ×10⁴, S1 linear backscatter, DEM metres), float32."""
    signature = np.asarray(SYNTHETIC_CLASS_SIGNATURES[label])
    texture = 0.75 + 0.5 * smooth_field(rng, size)  # (H, W)
    optical_means = np.array([CLAY_V0_BAND_STATISTICS[band][0] for band in list(CLAY_V0_BAND_STATISTICS)[:10]])
    optical = optical_means[:, None, None] * signature[:, None, None] * texture[None]
    optical = optical + rng.normal(0, 60, optical.shape)
    sar_scale = 0.02 if label == "water" else 0.12
    vv = sar_scale * (0.5 + smooth_field(rng, size)) * rng.gamma(4.0, 0.25, (size, size))
    vh = 0.25 * vv * (0.5 + smooth_field(rng, size))
    dem = 50 + 1500 * smooth_field(rng, size, scale=4) * rng.uniform(0.2, 1.0)
    bands = np.concatenate([optical.clip(0, 10000), vv[None], vh[None], dem[None]])
    return bands.astype(np.float32)


def write_synthetic_chips(
    output_dir: str | PathLike,
    count: int,
    size: int = 512,
    seed: int = 0,
    labels: list[str] | None = None,
) -> list[Path]:
    """Write `count` synthetic v0-format chips (13 bands, UTM CRS, `date` and `label` tags, v0 names).

    Each chip gets a land-cover label (cycling through `labels`, default all four synthetic classes) whose
    spectral signature shapes its optical bands, so that embeddings can be probed for it.
    """
    output = make_folder(output_dir)
    rng = np.random.default_rng(seed)
    labels = labels or list(SYNTHETIC_CLASS_SIGNATURES)
    paths = []
    for index in range(count):
        label = labels[index % len(labels)]
        zone = int(rng.integers(10, 50))
        northern = bool(rng.random() < 0.7)
        epsg = (32600 if northern else 32700) + zone
        easting = float(rng.uniform(300_000, 700_000 - size * 10))
        northing = float(rng.uniform(1_000_000, 6_000_000)) if northern else float(rng.uniform(4_000_000, 9_000_000))
        date = dt.date(2017, 1, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))
        tile = f"{zone:02d}{'N' if northern else 'S'}{chr(65 + index % 26)}{chr(65 + (index // 26) % 26)}"
        path = output / chip_name(tile, date, index)
        profile = dict(
            driver="GTiff",
            width=size,
            height=size,
            count=13,
            dtype="float32",
            crs=f"EPSG:{epsg}",
            transform=from_origin(easting, northing, 10, 10),
            compress="deflate",
        )
        pixels = synthetic_chip(rng, size, label)
        paths.append(
            write_chip_file(
                path, pixels, profile, {"date": date.isoformat(), "label": label}, list(CLAY_V0_BAND_STATISTICS)
            )
        )
    return paths


__all__ = [
    "ChipReport",
    "chip_name",
    "chip_windows",
    "make_chips",
    "missing_reason",
    "smooth_field",
    "synthetic_chip",
    "verify_geotiff",
    "write_chip_file",
    "write_synthetic_chips",
]
