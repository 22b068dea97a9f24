"""Band names: the one rule that names a chip's bands, wherever the chip is read or cut.

A band is named by its clay name (`blue` … `dem`), a sensor alias (`B02`, `B8A`, `VV`, `DEM`, …, any case) or the
name of a Sentinel-2 band v0 does not read (`B01` coastal, `B09` nir09, `B10` cirrus): every Sentinel-2 band is
known, so a chip that carries one is read by name and the model simply does not pick it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..models.clay.configuration_clay import CLAY_V0_BAND_NAMES

#: Sensor band ids accepted for the clay band names (case-insensitive): Sentinel-2, Sentinel-1 and the DEM.
BAND_ALIASES: dict[str, str] = {
    "b02": "blue",
    "b03": "green",
    "b04": "red",
    "b05": "rededge1",
    "b06": "rededge2",
    "b07": "rededge3",
    "b08": "nir",
    "b8a": "nir08",
    "b11": "swir16",
    "b12": "swir22",
    "vv": "vv",
    "vh": "vh",
    "dem": "dem",
    "elevation": "dem",
}
#: Clay v0's optical bands hold surface reflectance × 10 000 (Sentinel-2 L2A digital numbers, as its band statistics
#: assume). A STAC item's `raster:bands` scale and offset turn stored values into reflectance (Earth Search L2A:
#: 0.0001 and -0.1; Landsat C2 L2: 0.0000275 and -0.2), so these bands are written back in v0's unit.
V0_REFLECTANCE_BANDS: tuple[str, ...] = CLAY_V0_BAND_NAMES[:10]
V0_REFLECTANCE_UNIT = 1e-4


def v0_unit(name: str) -> float:
    """The physical value of one unit of clay band `name` in v0 chips (1e-4 reflectance for optical bands)."""
    return V0_REFLECTANCE_UNIT if name in V0_REFLECTANCE_BANDS else 1.0


#: Tag recording, per band, the nodata, scale and offset a source declared and the chipping applied, and the unit the
#: chip's values are written in (`written_unit`: chip value = (stored value × scale + offset) / written_unit).
DECLARED_TAG = "clay_raster_bands"


def file_scaling(dataset: Any, band: int) -> tuple[float, float]:
    """(scale, offset) a GeoTIFF declares for its 1-based `band` (GDAL's band scale/offset; (1, 0) when none)."""
    scale, offset = dataset.scales[band - 1], dataset.offsets[band - 1]
    return float(1.0 if scale is None else scale), float(0.0 if offset is None else offset)


def scaling_record(name: str | None, scale: float, offset: float) -> dict[str, float]:
    """The `DECLARED_TAG` entry of a band whose values were scaled by [`to_v0_unit`] (empty when they were not)."""
    if (scale, offset) == (1.0, 0.0):
        return {}
    return {"scale": scale, "offset": offset, "written_unit": v0_unit(name or "")}


def to_v0_unit(values: np.ndarray, name: str | None, scale: float, offset: float) -> np.ndarray:
    """Float `values` of band `name` as physical values (`value × scale + offset`, NaN stays NaN) in v0's unit for
    the band ([`v0_unit`]: optical reflectance × 10 000, so the v0 statistics apply)."""
    if (scale, offset) == (1.0, 0.0):
        return values
    kind = values.dtype.type
    return (values * kind(scale) + kind(offset)) / kind(v0_unit(name or ""))


def declared_scaling(
    dataset: Any, indexes: Sequence[int], names: Sequence[str | None] | None
) -> dict[int, tuple[str | None, float, float]]:
    """{position in `indexes`: (clay band name or None, scale, offset)} of the 1-based file bands `indexes` whose
    GeoTIFF declares a scale or offset; `names` are the bands' names in the same order (None: unknown)."""
    scaling = {}
    for position, index in enumerate(indexes):
        scale, offset = file_scaling(dataset, index)
        if (scale, offset) != (1.0, 0.0):
            name = band_name(names[position]) if names is not None and names[position] is not None else None
            scaling[position] = (name, scale, offset)
    return scaling


def scaled_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype of rescaled values of `dtype`: a float dtype stays, integers become float32 (exact for 16 bits)."""
    dtype = np.dtype(dtype)
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def apply_scaling(pixels: np.ndarray, scaling: dict[int, tuple[str | None, float, float]]) -> np.ndarray:
    """`pixels` (C, H, W) with each band of `scaling` ([`declared_scaling`]) in v0's unit ([`to_v0_unit`]): a float
    copy (float32 for integer pixels) when any band is scaled, `pixels` itself otherwise."""
    if not scaling:
        return pixels
    scaled = pixels.astype(scaled_dtype(pixels.dtype))
    for position, (name, scale, offset) in scaling.items():
        scaled[position] = to_v0_unit(scaled[position], name, scale, offset)
    return scaled


#: Sentinel-2 bands that v0 does not read, under their STAC common names (and their ids).
OTHER_SENTINEL2_BANDS: dict[str, str] = {"b01": "coastal", "b09": "nir09", "b10": "cirrus"}
_KNOWN = {
    **{name: name for name in CLAY_V0_BAND_NAMES},
    **BAND_ALIASES,
    **OTHER_SENTINEL2_BANDS,
    **{name: name for name in OTHER_SENTINEL2_BANDS.values()},
}
#: GDAL's placeholder description of an unnamed band ("Band 1"), which names nothing.
_DEFAULT_DESCRIPTION = re.compile(r"^band[ _]?\d+$", re.IGNORECASE)
_SENTINEL2_ID = re.compile(r"^b0?(\d{1,2}a?)$")


def band_name(text: str | None, extra: Iterable[str] = ()) -> str | None:
    """The canonical name of a band named `text` (a clay name, an alias, a Sentinel-2 id such as `B2` or `B02`, or
    one of `extra`, e.g. a fine-tuned model's own band names); None when `text` names no known band."""
    cleaned = (text or "").strip()
    if cleaned in extra:
        return cleaned
    key = cleaned.lower()
    sentinel2 = _SENTINEL2_ID.match(key)
    if sentinel2 is not None:
        key = f"b{int(sentinel2[1].rstrip('a')):02d}{'a' if sentinel2[1].endswith('a') else ''}"
        key = "b8a" if key == "b08a" else key
    return _KNOWN.get(key)


def is_unnamed(text: str | None) -> bool:
    """Whether a band description names nothing: empty, or GDAL's default "Band N"."""
    cleaned = (text or "").strip()
    return not cleaned or _DEFAULT_DESCRIPTION.match(cleaned) is not None


def described_band_names(
    descriptions: Sequence[str | None], extra: Iterable[str] = ()
) -> tuple[list[str | None], list[str]]:
    """(the canonical name of each band from its description, None for an unnamed band; the descriptions that name
    no known band). With no description naming anything the first list is all None."""
    extra = tuple(extra)
    names: list[str | None] = []
    unknown: list[str] = []
    for text in descriptions:
        if is_unnamed(text):
            names.append(None)
            continue
        name = band_name(text, extra)
        names.append(name)
        if name is None:
            unknown.append(str(text).strip())
    return names, unknown


def clay_band_name(name: str) -> str:
    """A clay band name (`blue` … `dem`) for a clay name or a sensor alias (`B02`, `B8A`, `VV`, …)."""
    canonical = band_name(name)
    if canonical in CLAY_V0_BAND_NAMES:
        return canonical
    aliases = ", ".join(alias.upper() for alias in BAND_ALIASES)
    why = f" ({canonical}, a band v0 does not read)" if canonical else ""
    raise ValueError(f"unknown band name {name!r}{why}: use one of {', '.join(CLAY_V0_BAND_NAMES)} or {aliases}")


__all__ = ["BAND_ALIASES", "OTHER_SENTINEL2_BANDS", "band_name", "clay_band_name", "described_band_names", "is_unnamed"]
