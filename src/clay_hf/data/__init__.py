"""Reading, cutting, packing and loading chips for Clay (GeoTIFF chips, WebDataset and Clay shards)."""

from .chips import Chip, ChipError, ChipLayout, date_from_filename, read_chip
from .datacube import BandSource, TargetGrid, band_sources, clay_band_name, make_datacube_chips, target_grid
from .dataset import (
    auto_num_shards,
    chip_dataloader,
    chip_features,
    collate_chips,
    drop_nonfinite_chips,
    load_geotiff_dataset,
    resolve_sources,
    shard_paths,
    split_of,
    split_paths,
)
from .sample_data import SampleDataUnavailable, sentinel2_sample_scene
from .shards import PackReport, ShardError, pack_shards
from .sources import ShardSelection, load_chip_dataset, split_chip_source
from .stac import StacBands, read_stac_item, search_stac_items, stac_band_sources
from .tiling import ChipReport, chip_name, make_chips, write_synthetic_chips

__all__ = [
    "BandSource",
    "Chip",
    "ChipError",
    "ChipLayout",
    "ChipReport",
    "PackReport",
    "SampleDataUnavailable",
    "ShardError",
    "ShardSelection",
    "StacBands",
    "TargetGrid",
    "auto_num_shards",
    "band_sources",
    "chip_dataloader",
    "chip_features",
    "chip_name",
    "clay_band_name",
    "collate_chips",
    "date_from_filename",
    "drop_nonfinite_chips",
    "load_chip_dataset",
    "load_geotiff_dataset",
    "make_chips",
    "make_datacube_chips",
    "pack_shards",
    "read_chip",
    "read_stac_item",
    "resolve_sources",
    "search_stac_items",
    "sentinel2_sample_scene",
    "shard_paths",
    "split_chip_source",
    "split_of",
    "split_paths",
    "stac_band_sources",
    "target_grid",
    "write_synthetic_chips",
]
