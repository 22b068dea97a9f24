"""Reading, cutting and loading GeoTIFF chips for Clay."""

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
from .tiling import ChipReport, chip_name, make_chips, write_synthetic_chips

__all__ = [
    "Chip",
    "ChipError",
    "ChipLayout",
    "ChipReport",
    "auto_num_shards",
    "chip_dataloader",
    "chip_features",
    "chip_name",
    "collate_chips",
    "date_from_filename",
    "drop_nonfinite_chips",
    "load_geotiff_dataset",
    "make_chips",
    "read_chip",
    "resolve_sources",
    "shard_paths",
    "split_of",
    "split_paths",
    "write_synthetic_chips",
]
