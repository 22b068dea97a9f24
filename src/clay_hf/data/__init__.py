"""Reading, packing and loading chips for Clay (GeoTIFF chips, WebDataset and Clay shards)."""

from .chips import Chip, ChipError, ChipLayout, date_from_filename, read_chip
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
from .shards import PackReport, ShardError, pack_shards
from .sources import ShardSelection, load_chip_dataset, split_chip_source

__all__ = [
    "Chip",
    "ChipError",
    "ChipLayout",
    "PackReport",
    "ShardError",
    "ShardSelection",
    "auto_num_shards",
    "chip_dataloader",
    "chip_features",
    "collate_chips",
    "date_from_filename",
    "drop_nonfinite_chips",
    "load_chip_dataset",
    "load_geotiff_dataset",
    "pack_shards",
    "read_chip",
    "resolve_sources",
    "shard_paths",
    "split_chip_source",
    "split_of",
    "split_paths",
]
