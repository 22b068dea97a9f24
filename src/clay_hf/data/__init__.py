"""Reading, cutting, packing and loading chips for Clay (GeoTIFF chips, WebDataset and Clay shards)."""

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
from .tiling import ChipReport, chip_name, make_chips, write_synthetic_chips

__all__ = [
    "Chip",
    "ChipError",
    "ChipLayout",
    "ChipReport",
    "PackReport",
    "ShardError",
    "ShardSelection",
    "auto_num_shards",
    "chip_dataloader",
    "chip_features",
    "chip_name",
    "collate_chips",
    "date_from_filename",
    "drop_nonfinite_chips",
    "load_chip_dataset",
    "load_geotiff_dataset",
    "make_chips",
    "pack_shards",
    "read_chip",
    "resolve_sources",
    "shard_paths",
    "split_chip_source",
    "split_of",
    "split_paths",
    "write_synthetic_chips",
]
