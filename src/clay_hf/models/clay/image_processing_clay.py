"""ClayImageProcessor: raw band stacks, dates and places → the inputs Clay v0 was trained on.

The formulas are those of the v0 training code:

- pixels: (x − mean) / std per band, with the v0 statistics below;
- `timestep` (B, 3): for year, month, day, r = 2π(year−2012)/18, 2π(month−1)/11, 2π(day−1)/30, then atan2(cos r, sin r);
- `latlon` (B, 2): (sin(lat), atan2(cos(lon), sin(lon))), angles in radians.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils.logging import get_logger

from .configuration_clay import CLAY_V0_BAND_NAMES

logger = get_logger(__name__)

#: Mean and standard deviation of each v0 band over the training chips (raw units).
CLAY_V0_BAND_STATISTICS: dict[str, tuple[float, float]] = {
    "blue": (1369.03, 2026.96),
    "green": (1597.68, 2011.88),
    "red": (1741.10, 2146.35),
    "rededge1": (2053.58, 2138.96),
    "rededge2": (2569.82, 2003.27),
    "rededge3": (2763.01, 1962.45),
    "nir": (2858.43, 2016.38),
    "nir08": (2893.86, 1917.12),
    "swir16": (2303.00, 1679.88),
    "swir22": (1807.79, 1568.06),
    "vv": (0.026, 0.118),
    "vh": (0.118, 0.873),
    "dem": (499.46, 880.35),
}

_YEAR_ORIGIN, _YEAR_SPAN = 2012, 2030 - 2012

DateLike = str | dt.date | dt.datetime | np.datetime64


# ---------------------------------------------------------------------------------------------------------------------
# Metadata encodings
# ---------------------------------------------------------------------------------------------------------------------


def parse_date(value: DateLike) -> dt.date:
    """A `YYYY-MM-DD` string (or any ISO date), `datetime.date`/`datetime` or `numpy.datetime64` → `datetime.date`."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError("date is NaT (not a time).")
        return value.astype("datetime64[D]").item()
    if isinstance(value, str):
        text = value.strip()
        for parse in (dt.date.fromisoformat, lambda t: dt.datetime.fromisoformat(t).date()):
            try:
                return parse(text)
            except ValueError:
                continue
        raise ValueError(f"could not parse date {value!r}; expected YYYY-MM-DD.")
    raise ValueError(f"could not parse date {value!r} of type {type(value).__name__}; give a YYYY-MM-DD string.")


def _angle(fraction_of_turn: np.ndarray) -> np.ndarray:
    radians = 2 * math.pi * fraction_of_turn
    return np.arctan2(np.cos(radians), np.sin(radians))


def encode_dates(dates: Sequence[DateLike]) -> np.ndarray:
    """Dates → v0 `timestep` (B, 3) float32: the encoded (year, month, day)."""
    parsed = [parse_date(value) for value in dates]
    year = np.array([date.year for date in parsed], dtype=np.float64)
    month = np.array([date.month for date in parsed], dtype=np.float64)
    day = np.array([date.day for date in parsed], dtype=np.float64)
    encoded = np.stack(
        [_angle((year - _YEAR_ORIGIN) / _YEAR_SPAN), _angle((month - 1) / 11), _angle((day - 1) / 30)], axis=1
    )
    return encoded.astype(np.float32).reshape(len(parsed), 3)


def lonlat_pairs(lonlat: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(lon, lat) in degrees as (B, 2) pairs, or one (2,) pair → (B, 2) float64. Any other shape is an error: a
    (2, B) array of [lons, lats] would otherwise be read as wrong pairs."""
    try:
        values = np.asarray(lonlat, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"lonlat must be (B, 2) (longitude, latitude) pairs in degrees; could not read {lonlat!r}."
        ) from error
    if values.shape == (2,):
        values = values[None]
    if values.ndim != 2 or values.shape[1] != 2:
        hint = (
            " (a [longitudes, latitudes] array is (2, B): transpose it)"
            if values.ndim == 2 and values.shape[0] == 2
            else ""
        )
        raise ValueError(
            f"lonlat must be (B, 2) (longitude, latitude) pairs or one (2,) pair, in degrees; got shape "
            f"{values.shape}{hint}."
        )
    return values


def encode_lonlat(lonlat: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(lon, lat) degrees, (B, 2) or (2,) → v0 `latlon` (B, 2) float32: (sin(lat), atan2(cos(lon), sin(lon)))."""
    values = lonlat_pairs(lonlat)
    lon, lat = values[:, 0], values[:, 1]
    bad = ~np.isfinite(values).all(axis=1) | (np.abs(lon) > 180) | (np.abs(lat) > 90)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"lon/lat out of range at item {index}: ({lon[index]}, {lat[index]}); give (longitude in [-180, 180], "
            "latitude in [-90, 90]) in degrees, longitude first."
        )
    lat_rad, lon_rad = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.sin(lat_rad), np.arctan2(np.cos(lon_rad), np.sin(lon_rad))], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation (numpy here, torch on any device for training loops)
# ---------------------------------------------------------------------------------------------------------------------


def normalize_pixels(pixels: torch.Tensor, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float]):
    """(x − mean) / std per band of a (B, C, H, W) or (C, H, W) tensor of any dtype → float32, on its device.

    Meant for training loops that move compact (e.g. uint16) batches to the accelerator and normalise there.
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device)
    std = torch.as_tensor(std, dtype=torch.float32, device=pixels.device)
    shape = (-1, 1, 1)
    return (pixels.to(torch.float32) - mean.view(shape)) / std.view(shape)


class ClayImageProcessor(BaseImageProcessor):
    r"""Turns raw band stacks, acquisition dates and chip centres into Clay v0 inputs.

    Args:
        band_names: the bands, in channel order, that `images` hold by default (the 13 v0 bands).
        image_mean, image_std: per-band statistics aligned with `band_names` (the v0 table by default).
        nodata: a raw value that marks missing pixels (besides NaN and ±inf).
        fill_value: what replaces missing pixels: `None` raises an error that says how many are missing and where;
            `"mean"` uses the band mean (0 after normalisation); a number is used as the raw value.
    """

    model_input_names = ["pixel_values", "timestep", "latlon"]  # noqa: RUF012

    def __init__(
        self,
        band_names: Sequence[str] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        nodata: float | None = None,
        fill_value: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.band_names = list(band_names) if band_names is not None else list(CLAY_V0_BAND_NAMES)
        if image_mean is None or image_std is None:
            unknown = [name for name in self.band_names if name not in CLAY_V0_BAND_STATISTICS]
            if unknown:
                raise ValueError(f"no v0 statistics for bands {unknown}: pass image_mean and image_std.")
        self.image_mean = list(image_mean) if image_mean is not None else self._v0_statistic(0)
        self.image_std = list(image_std) if image_std is not None else self._v0_statistic(1)
        if not len(self.image_mean) == len(self.image_std) == len(self.band_names):
            raise ValueError(
                f"image_mean ({len(self.image_mean)}), image_std ({len(self.image_std)}) and band_names "
                f"({len(self.band_names)}) must have one entry per band."
            )
        if fill_value is not None and fill_value != "mean" and not isinstance(fill_value, (int, float)):
            raise ValueError(f"fill_value must be None, 'mean' or a number, got {fill_value!r}.")
        self.nodata = nodata
        self.fill_value = fill_value

    def _v0_statistic(self, which: int) -> list[float]:
        return [CLAY_V0_BAND_STATISTICS[name][which] for name in self.band_names]

    def band_statistics(self, bands: Sequence[str] | None = None) -> tuple[list[float], list[float]]:
        """Mean and std of the selected bands (all of `band_names` by default)."""
        indices = self.band_indices(bands)
        return [self.image_mean[i] for i in indices], [self.image_std[i] for i in indices]

    def fill_values(self, fill_value: float | str, bands: Sequence[str] | None = None) -> list[float]:
        """The raw value that replaces a missing pixel in each band: the band's mean for `"mean"` (0 once
        normalised), else `fill_value` itself."""
        if fill_value == "mean":
            return self.band_statistics(bands)[0]
        if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
            raise ValueError(f"fill_value must be 'mean' or a number, got {fill_value!r}.")
        return [float(fill_value)] * len(self.band_indices(bands))

    def band_indices(self, bands: Sequence[str] | None = None) -> list[int]:
        if bands is None:
            return list(range(len(self.band_names)))
        unknown = [band for band in bands if band not in self.band_names]
        if unknown:
            raise ValueError(f"unknown bands {unknown}; this processor knows {self.band_names}.")
        return [self.band_names.index(band) for band in bands]

    def normalize_tensor(self, pixels: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        """Normalise a raw (B, C, H, W) tensor on its own device (see [`normalize_pixels`])."""
        mean, std = self.band_statistics(bands)
        return normalize_pixels(pixels, mean, std)

    def select_bands(self, bands: Sequence[str]) -> ClayImageProcessor:
        """A copy for inputs that hold `bands` (names, in channel order), with this processor's statistics for them:
        the processor of a partial model is `processor.select_bands(model.config.band_names)`."""
        mean, std = self.band_statistics(bands)
        processor = copy.deepcopy(self)
        processor.band_names, processor.image_mean, processor.image_std = list(bands), mean, std
        return processor

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        dates: DateLike | Sequence[DateLike] | None = None,
        lonlat: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | None = None,
        bands: Sequence[str] | None = None,
        nodata: float | None = None,
        fill_value: float | str | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Raw images (C, H, W) or (B, C, H, W), channels first, with their dates and (lon, lat) centres →
        `pixel_values` (B, C, H, W) float32 holding this processor's `band_names` in its order, `timestep` (B, 3),
        `latlon` (B, 2).

        `bands` names the images' channels in the images' order (by default: this processor's `band_names`); the
        processor picks the bands it needs by name, whatever their order, and says which it needs and lacks.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}.")
        if type(images).__module__.startswith("PIL."):
            raise ValueError(
                "ClayImageProcessor takes raw band stacks (C, H, W) or (B, C, H, W), numpy or torch, with dates and "
                "lonlat, not PIL images; for a pipeline, use pipeline('clay-feature-extraction', model=...) (or "
                "'clay-image-segmentation', 'clay-image-classification') after `import clay_hf`."
            )
        pixels = _as_batch(images)  # (B, C, H, W), float64
        pixels = self._pick_bands(pixels, bands)  # (B, C, H, W) in band_names order
        mean, std = self.band_statistics()
        if dates is None or lonlat is None:
            raise ValueError("dates and lonlat are required: Clay encodes each chip's date and centre.")
        date_list = [dates] if isinstance(dates, (str, dt.date, np.datetime64)) else list(dates)
        lonlat_array = lonlat_pairs(lonlat)  # (B, 2)
        if not len(date_list) == len(lonlat_array) == pixels.shape[0]:
            raise ValueError(
                f"mismatched batch lengths: {pixels.shape[0]} images, {len(date_list)} dates, "
                f"{len(lonlat_array)} lon/lat pairs."
            )
        pixels = self._fill_missing(
            pixels, self.nodata if nodata is None else nodata, self.fill_value if fill_value is None else fill_value
        )
        mean_array = np.asarray(mean, dtype=np.float64)[None, :, None, None]
        std_array = np.asarray(std, dtype=np.float64)[None, :, None, None]
        data = {
            "pixel_values": ((pixels - mean_array) / std_array).astype(np.float32),
            "timestep": encode_dates(date_list),
            "latlon": encode_lonlat(lonlat_array),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """A segmentation model's `outputs` (its `logits` (B, K, H, W)) → one label map (H, W) of class ids per chip,
        resized (bilinear on the logits) to each of `target_sizes` (height, width) when given, as transformers'
        image processors do."""
        logits = outputs.logits if hasattr(outputs, "logits") else outputs  # (B, K, H, W)
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"{len(target_sizes)} target sizes for {len(logits)} chips.")
        maps = []
        for index, chip_logits in enumerate(logits):
            if target_sizes is not None and tuple(target_sizes[index]) != tuple(chip_logits.shape[-2:]):
                chip_logits = torch.nn.functional.interpolate(
                    chip_logits[None], size=tuple(target_sizes[index]), mode="bilinear", align_corners=False
                )[0]  # (K, h, w)
            maps.append(chip_logits.argmax(dim=0))  # (H, W)
        return maps

    def _pick_bands(self, pixels: np.ndarray, bands: Sequence[str] | None) -> np.ndarray:
        """The channels of `band_names`, in that order, from images whose channels are `bands`."""
        given = list(bands) if bands is not None else self.band_names
        if pixels.shape[1] != len(given):
            raise ValueError(f"images have {pixels.shape[1]} bands, but {len(given)} are named: {given}.")
        if len(set(given)) != len(given):
            raise ValueError(f"bands {given} name a band twice.")
        lacking = [band for band in self.band_names if band not in given]
        if lacking:
            raise ValueError(
                f"images lack band(s) {lacking} that this processor's model reads ({self.band_names}); the images "
                f"hold {given}. For a model of fewer bands use processor.select_bands(model.config.band_names)."
            )
        return pixels[:, [given.index(band) for band in self.band_names]]

    def _fill_missing(self, pixels: np.ndarray, nodata: float | None, fill_value: float | str | None) -> np.ndarray:
        """Replace NaN, ±inf and `nodata` values (B, C, H, W) with [`fill_values`], or raise saying where they are."""
        names = self.band_names
        missing = ~np.isfinite(pixels)
        if nodata is not None:
            missing |= pixels == nodata
        if not missing.any():
            return pixels
        if fill_value is None:
            per_band = missing.sum(axis=(0, 2, 3))
            where = ", ".join(f"{names[i]}: {int(count)}" for i, count in enumerate(per_band) if count)
            raise ValueError(
                f"images hold {int(missing.sum())} missing pixels (NaN, inf or nodata) — per band {where}. Pass "
                "fill_value='mean' (or a raw value) to fill them, and nodata=<value> if the files mark gaps with one."
            )
        fill = np.asarray(self.fill_values(fill_value), dtype=np.float64)
        return np.where(missing, fill[None, :, None, None], pixels)


def parse_fill_value(text: str) -> float | str:
    """A command line's fill value: 'mean' or a raw pixel value (argparse `type=`)."""
    if text == "mean":
        return text
    try:
        return float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected 'mean' or a number, got {text!r}") from None


def load_image_processor(model_name_or_path: str, band_names: Sequence[str]) -> ClayImageProcessor:
    """The processor saved beside a model, for the bands the model reads (`model.config.band_names`: a partial
    model loaded with `bands=[...]` reads fewer than the folder's processor), or the v0 processor for `band_names`
    when none was saved."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        logger.warning("no preprocessor_config.json in %s: using the v0 statistics", model_name_or_path)
        return ClayImageProcessor(band_names=band_names)
    if list(processor.band_names) == list(band_names):
        return processor
    return processor.select_bands(band_names)


def _as_batch(images: Any) -> np.ndarray:
    """(C, H, W), (B, C, H, W) or a list of (C, H, W), numpy or torch → (B, C, H, W) float64."""
    if isinstance(images, (list, tuple)):
        arrays = [_to_numpy(image) for image in images]
        if any(array.ndim != 3 for array in arrays):
            raise ValueError("a list of images must hold (C, H, W) arrays, channels first.")
        if len({array.shape for array in arrays}) > 1:
            raise ValueError(f"images in a list must share one shape, got {sorted({a.shape for a in arrays})}.")
        array = np.stack(arrays)
    else:
        array = _to_numpy(images)
        if array.ndim == 3:
            array = array[None]
    if array.ndim != 4:
        raise ValueError(f"images must be (C, H, W) or (B, C, H, W), channels first; got shape {array.shape}.")
    return array.astype(np.float64, copy=False)


def _to_numpy(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    return np.asarray(image)


__all__ = [
    "CLAY_V0_BAND_STATISTICS",
    "ClayImageProcessor",
    "encode_dates",
    "encode_lonlat",
    "load_image_processor",
    "normalize_pixels",
    "parse_date",
    "parse_fill_value",
]
