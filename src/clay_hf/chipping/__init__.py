"""Making chips: cutting stacked GeoTIFFs (tiling), stacking band files and STAC items (datacube, STAC) and the
built-in sample scene."""

from __future__ import annotations

from .datacube import BandSource, TargetGrid, band_sources, clay_band_name, make_datacube_chips, target_grid
from .sample_data import SampleDataUnavailable, sentinel2_sample_scene
from .stac import StacBands, read_stac_item, search_stac_items, stac_band_sources
from .tiling import ChipReport, chip_name, make_chips, write_synthetic_chips

__all__ = [
    "BandSource",
    "ChipReport",
    "SampleDataUnavailable",
    "StacBands",
    "TargetGrid",
    "band_sources",
    "chip_name",
    "clay_band_name",
    "make_chips",
    "make_datacube_chips",
    "read_stac_item",
    "search_stac_items",
    "sentinel2_sample_scene",
    "stac_band_sources",
    "target_grid",
    "write_synthetic_chips",
]
