"""Cutting rasters into v0-format chips, and synthetic v0 chips for tests and the demo."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import from_origin
from rasterio.windows import Window

from ..image_processing_clay import CLAY_V0_BAND_STATISTICS
from .chips import ChipError, chip_file_name, chip_key, resolve_chip_date


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

    Chips keep the source CRS, are deflate-compressed, carry a `date` tag, the source's name (`clay_source`) and v0
    names. A chip whose share of nodata or non-finite pixels (including the part past the raster's edge) exceeds
    `max_nodata_fraction` is skipped. Padding past the edge is written as nodata: the source's nodata value, else
    NaN (float chips) or a value the chip does not hold (integer chips), recorded as the chip's nodata. Before
    writing, a ChipError is raised if a chip name is already taken by a chip of another source (same tile id and
    date): nothing is overwritten. `dtype` is "float32" (v0) or "source".
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
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
            for window, chip_file in zip(windows, names, strict=True):
                fill = raster.nodata if raster.nodata is not None else 0
                pixels = raster.read(window=window, boundless=True, fill_value=fill)  # (C, chip, chip)
                missing = _missing_fraction(pixels, raster.nodata, window, raster.height, raster.width)
                label = f"{name} window row={window.row_off} col={window.col_off}"
                if missing > max_nodata_fraction:
                    report.skipped.append((label, f"{missing:.1%} nodata (limit {max_nodata_fraction:.1%})"))
                    continue
                pixels = pixels.astype(out_dtype)
                nodata = raster.nodata
                if nodata is None and _reaches_past_edge(window, raster.height, raster.width):
                    nodata = _mark_padding(pixels, window, raster.height, raster.width)
                    if nodata is None:
                        report.skipped.append((label, f"no {out_dtype} value is free to mark its padding as nodata"))
                        continue
                path = output / chip_file
                profile = dict(
                    driver="GTiff",
                    width=chip_size,
                    height=chip_size,
                    count=raster.count,
                    dtype=out_dtype,
                    crs=raster.crs,
                    transform=raster.window_transform(window),
                    compress="deflate",
                    nodata=nodata,
                )
                with rasterio.open(path, "w", **profile) as chip:
                    chip.write(pixels)
                    chip.update_tags(date=chip_date.isoformat(), **{SOURCE_TAG: chip_key(name)})
                    if raster.descriptions and any(raster.descriptions):
                        chip.descriptions = raster.descriptions
                report.written.append(path)
    except (RasterioError, OSError) as error:
        raise ChipError(name, f"cannot be read ({error})") from error
    return report


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


def _reaches_past_edge(window: Window, height: int, width: int) -> bool:
    return window.row_off + window.height > height or window.col_off + window.width > width


def _mark_padding(pixels: np.ndarray, window: Window, height: int, width: int) -> float | None:
    """Fill the part of `pixels` past the raster's edge with a nodata value (NaN for floats, else the dtype's
    maximum or minimum if the chip does not hold it) and return it; None if no such value is free."""
    inside = pixels[:, : max(0, height - window.row_off), : max(0, width - window.col_off)]
    if np.issubdtype(pixels.dtype, np.floating):
        candidates = [np.nan]
    else:
        info = np.iinfo(pixels.dtype)
        candidates = [value for value in (info.max, info.min) if not (inside == value).any()]
    if not candidates:
        return None
    padding = np.ones(pixels.shape[1:], bool)
    padding[: inside.shape[1], : inside.shape[2]] = False
    pixels[:, padding] = candidates[0]
    return float(candidates[0])


def _tile_id(text: str) -> str:
    """A chip-name-safe tile id (no underscores: v0 names are split on them)."""
    return re.sub(r"[^A-Za-z0-9]", "", text) or "tile"


def _missing_fraction(pixels: np.ndarray, nodata: float | None, window: Window, height: int, width: int) -> float:
    missing = ~np.isfinite(pixels) if np.issubdtype(pixels.dtype, np.floating) else np.zeros(pixels.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        missing |= pixels == nodata
    missing = missing.any(axis=0)  # (chip, chip): a pixel is missing if any band is
    inside_rows = max(0, min(window.height, height - window.row_off))
    inside_cols = max(0, min(window.width, width - window.col_off))
    missing[inside_rows:, :] = True
    missing[:, inside_cols:] = True
    return float(missing.mean())


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


def _smooth_field(rng: np.random.Generator, size: int, scale: int = 8) -> np.ndarray:
    """A smooth random field in [0, 1], (size, size): bilinear upsampling of a coarse noise grid."""
    coarse = rng.random((scale + 1, scale + 1))
    axis = np.linspace(0, scale, size)
    low = np.floor(axis).astype(int).clip(0, scale - 1)
    frac = axis - low
    rows = coarse[low] * (1 - frac)[:, None] + coarse[low + 1] * frac[:, None]  # (size, scale+1)
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def synthetic_chip(rng: np.random.Generator, size: int, label: str) -> np.ndarray:
    """13 bands of plausible values (S2 reflectance ×10⁴, S1 linear backscatter, DEM metres), float32."""
    signature = np.asarray(SYNTHETIC_CLASS_SIGNATURES[label])
    texture = 0.75 + 0.5 * _smooth_field(rng, size)  # (H, W)
    optical_means = np.array([CLAY_V0_BAND_STATISTICS[band][0] for band in list(CLAY_V0_BAND_STATISTICS)[:10]])
    optical = optical_means[:, None, None] * signature[:, None, None] * texture[None]
    optical = optical + rng.normal(0, 60, optical.shape)
    sar_scale = 0.02 if label == "water" else 0.12
    vv = sar_scale * (0.5 + _smooth_field(rng, size)) * rng.gamma(4.0, 0.25, (size, size))
    vh = 0.25 * vv * (0.5 + _smooth_field(rng, size))
    dem = 50 + 1500 * _smooth_field(rng, size, scale=4) * rng.uniform(0.2, 1.0)
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
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
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
        with rasterio.open(path, "w", **profile) as chip:
            chip.write(synthetic_chip(rng, size, label))
            chip.update_tags(date=date.isoformat(), label=label)
            chip.descriptions = tuple(CLAY_V0_BAND_STATISTICS)
        paths.append(path)
    return paths


__all__ = ["ChipReport", "chip_name", "chip_windows", "make_chips", "synthetic_chip", "write_synthetic_chips"]
