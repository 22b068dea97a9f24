"""One loader for every chip format: GeoTIFF chips, WebDataset tar shards and Clay shards (`*.clayshard`).

[`load_chip_dataset`] looks at the source and gives the same records (the features of
[`clay_hf.data.dataset.chip_features`]) whatever the format, so training, embedding and evaluation take any of them.
Clay shards are streamed like GeoTIFF chips: the records are split into a number of work shards that is a multiple
of world size × workers (so `split_dataset_by_node` gives every rank, and every DataLoader worker, its own
records), the train/validation split hashes each chip's file name exactly as for GeoTIFF chips (a chip lands in
the same split in either format), and `state_dict()` / `load_state_dict()` resume.
"""

from __future__ import annotations

import glob
import itertools
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, IterableDataset
from transformers.utils.logging import get_logger

from ..utils.errors import ClayUserError
from .chips import ChipError, ChipLayout, read_chip
from .dataset import (
    BadChipLog,
    auto_num_shards,
    chip_features,
    load_geotiff_dataset,
    resolve_sources,
    split_of,
    split_paths,
)
from .shards import SHARD_SUFFIX, ShardError, _open, find_shards, read_index, read_record

logger = get_logger(__name__)

WEBDATASET_SUFFIXES = (".tar",)
SourceLike = str | PathLike | Sequence[str | PathLike]


# ---------------------------------------------------------------------------------------------------------------------
# Which format
# ---------------------------------------------------------------------------------------------------------------------


def chip_format(source: Any) -> str:
    """'shards', 'webdataset' or 'geotiff': what a source (folder, glob, list file, list, selection) holds."""
    if isinstance(source, ShardSelection):
        return "shards"
    names = _sample_names(source)
    if names and all(name.endswith(SHARD_SUFFIX) for name in names):
        return "shards"
    if names and all(name.endswith(WEBDATASET_SUFFIXES) for name in names):
        return "webdataset"
    return "geotiff"


def _sample_names(source: Any) -> list[str]:
    """A few entries of the source, enough to tell its format."""
    if isinstance(source, (list, tuple)):
        return [str(item) for item in source]
    text = str(source)
    if "://" in text or text.startswith("/vsi"):
        return [text.split("?", 1)[0]]
    path = Path(text)
    if path.is_dir():
        for suffix in (SHARD_SUFFIX, *WEBDATASET_SUFFIXES):
            first = next(path.rglob(f"*{suffix}"), None)
            if first is not None:
                return [str(first)]
        return []
    if path.is_file() and path.suffix in (SHARD_SUFFIX, *WEBDATASET_SUFFIXES):
        return [text]
    if path.is_file():  # a list file
        lines = (line.strip() for line in path.read_text().splitlines())
        return [line for line in lines if line and not line.startswith("#")][:1]
    return sorted(glob.glob(text, recursive=True))[:1]


# ---------------------------------------------------------------------------------------------------------------------
# Shard records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ShardSelection:
    """Records of Clay shards: for each file, the positions of the chosen records and the chips' names."""

    files: list[str]
    positions: list[list[int]]
    names: list[list[str]] = field(repr=False)

    @classmethod
    def from_files(cls, files: Sequence[str]) -> ShardSelection:
        """Every record of the files (their indexes are read now: a truncated file is a ShardError naming it)."""
        if not files:
            raise FileNotFoundError("no Clay shards (*.clayshard) given.")
        indexes = [read_index(path) for path in files]
        return cls(
            [index.path for index in indexes],
            [list(range(len(index))) for index in indexes],
            [list(index.names) for index in indexes],
        )

    def __len__(self) -> int:
        return sum(len(positions) for positions in self.positions)

    def __iter__(self) -> Iterator[str]:
        """The chips' names (their source URLs), in order."""
        for names in self.names:
            yield from names

    def where(self, keep: Any) -> ShardSelection:
        """The records whose name `keep(name)` accepts."""
        positions, names = [], []
        for file_positions, file_names in zip(self.positions, self.names, strict=True):
            chosen = [(p, n) for p, n in zip(file_positions, file_names, strict=True) if keep(n)]
            positions.append([p for p, _ in chosen])
            names.append([n for _, n in chosen])
        return ShardSelection(list(self.files), positions, names)

    def split(self, split: str, validation_fraction: float = 0.2) -> ShardSelection:
        """The train or validation records, by the hash of each chip's file name (as `split_paths`)."""
        return self.where(lambda name: split_of(name, validation_fraction) == split)

    def all_names(self) -> list[str]:
        return [name for names in self.names for name in names]

    def pieces(self, num_shards: int) -> list[list[tuple[str, list[int]]]]:
        """`num_shards` near-equal work shards of consecutive records, each a list of (file, positions)."""
        file_ids = np.concatenate([np.full(len(p), i) for i, p in enumerate(self.positions)] or [np.zeros(0, int)])
        flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in self.positions] or [np.zeros(0, np.int64)])
        bounds = np.linspace(0, len(flat), num_shards + 1).round().astype(int)
        shards = []
        for start, stop in itertools.pairwise(bounds):
            ids, positions = file_ids[start:stop], flat[start:stop]
            breaks = np.flatnonzero(np.diff(ids)) + 1
            shards.append(
                [
                    (self.files[int(group_ids[0])], group.tolist())
                    for group_ids, group in zip(np.split(ids, breaks), np.split(positions, breaks), strict=True)
                    if len(group)
                ]
            )
        return shards


def generate_shard_chips(
    pieces: Sequence[Sequence[tuple[str, Sequence[int]]]], layout: ChipLayout
) -> Iterator[dict[str, Any]]:
    """The generator behind the shard loader: records as `generate_chips` gives them, each chip made to fit
    `layout`; a bad record (corrupted, or not fitting) is logged and yielded as a `bad_record`, so that it is
    counted in the batch it falls in. A shard that became unreadable counts all its records as bad."""
    log = BadChipLog()
    for piece in pieces:  # datasets hands each call a slice of the list of work shards
        for path, positions in piece:
            try:
                index = read_index(path)  # the file may have changed since the dataset was built
                handle = _open(path)
            except (OSError, ShardError) as error:
                for position in positions:
                    yield log.record(ChipError(f"{path} record {position}", f"is unreadable ({error})"), layout)
                continue
            with handle:
                for position in positions:
                    try:
                        yield read_record(handle, index, position, layout=layout)[0].to_example()
                    except ChipError as error:
                        yield log.record(error, layout)


def load_shard_dataset(
    selection: ShardSelection,
    num_shards: int | None = None,
    world_size: int = 1,
    num_workers: int = 1,
    layout: ChipLayout | None = None,
) -> IterableDataset:
    """Stream the selected records of Clay shards as chip records (see the module docstring), each made to fit
    `layout` (the model's bands, size and dtype; by default the 13 v0 bands at 512×512, as for GeoTIFF chips)."""
    if len(selection) == 0:
        raise FileNotFoundError(f"no chips selected in the Clay shards {selection.files[:3]}…")
    layout = layout or ChipLayout()
    pieces = selection.pieces(num_shards or auto_num_shards(len(selection), world_size, num_workers))
    return IterableDataset.from_generator(
        generate_shard_chips,
        gen_kwargs={"pieces": pieces, "layout": layout},
        features=chip_features(*layout.shape, layout.dtype),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Before a run works
# ---------------------------------------------------------------------------------------------------------------------


class NoUsableChipsError(ClayUserError):
    """Not one chip of a run fits what the model reads: said before the run works, with the fix."""


_SIZE_PROBLEM = re.compile(r"is (?P<height>\d+)×(?P<width>\d+) pixels, expected")


def check_chips_usable(chips: list[str] | ShardSelection, layout: ChipLayout, sample: int = 16) -> None:
    """Read the headers of up to `sample` chips spread evenly over `chips` (all of them when fewer) against
    `layout`; when none fits, raise a [`NoUsableChipsError`] that names the problems and the fix (for chips of
    another size, `--image_size`). A run then never starts work that can use no chip."""
    names = list(chips) if not isinstance(chips, ShardSelection) else chips.all_names()
    if not names:
        return
    picks = sorted({round(i * (len(names) - 1) / max(sample - 1, 1)) for i in range(min(sample, len(names)))})
    errors = [error for error in (_header_error(chips, pick, layout) for pick in picks) if error is not None]
    if len(errors) < len(picks):
        return
    problems = sorted({error.problem for error in errors})
    sizes = {(match["height"], match["width"]) for match in map(_SIZE_PROBLEM.search, problems) if match}
    fix = ""
    if len(sizes) == 1 and len(problems) == 1:
        height, width = sizes.pop()
        side = height if height == width else f"{height} {width}"
        fix = f"; to train or embed at the chips' size, pass --image_size {side}"
    shown = "; ".join(f"{error.source}: {error.problem}" for error in errors[:3])
    raise NoUsableChipsError(
        f"none of the {len(picks)} chips checked of {len(names)} can be used: {shown}"
        f"{' (and more)' if len(errors) > 3 else ''}{fix}"
    )


def _header_error(chips: list[str] | ShardSelection, position: int, layout: ChipLayout) -> ChipError | None:
    """The ChipError of chip `position`'s header against `layout` (None when it fits)."""
    try:
        if not isinstance(chips, ShardSelection):
            read_chip(chips[position], read_pixels=False, layout=layout)
            return None
        for path, positions in chips.pieces(len(chips))[position]:
            with _open(path) as handle:
                read_record(handle, read_index(path, handle), positions[0], read_pixels=False, layout=layout)
    except ChipError as error:
        return error
    except (OSError, ShardError) as error:
        return ChipError(str(position), f"cannot be read ({error})")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The dispatcher
# ---------------------------------------------------------------------------------------------------------------------


def resolve_chip_source(source: SourceLike | ShardSelection) -> list[str] | ShardSelection:
    """GeoTIFF chip paths (as `resolve_sources`), or the records of Clay shards."""
    if isinstance(source, ShardSelection):
        return source
    fmt = chip_format(source)
    if fmt == "shards":
        return ShardSelection.from_files(find_shards(source))
    if fmt == "webdataset":
        raise ValueError(
            f"{source}: WebDataset shards are read with load_chip_dataset (streaming) only; for training, pack the "
            "chips into Clay shards with clay-pack-shards."
        )
    return resolve_sources(source)


def without_chips(
    chips: list[str] | ShardSelection, names: Collection[str], key: Callable[[str], str] = str
) -> list[str] | ShardSelection:
    """The chips (paths or shard records) whose `key(name)` is not in `names` (e.g. those already done)."""
    if isinstance(chips, ShardSelection):
        return chips.where(lambda name: key(name) not in names)
    return [path for path in chips if key(path) not in names]


def split_chip_source(
    train_source: SourceLike,
    validation_source: SourceLike | None = None,
    validation_fraction: float = 0.2,
) -> tuple[list[str] | ShardSelection, list[str] | ShardSelection]:
    """Train and validation chips: all of `validation_source`, or the deterministic hash split of `train_source`."""
    chips = resolve_chip_source(train_source)
    if validation_source:
        return chips, resolve_chip_source(validation_source)
    if isinstance(chips, ShardSelection):
        return chips.split("train", validation_fraction), chips.split("validation", validation_fraction)
    splits = split_paths(chips, validation_fraction)
    return splits["train"], splits["validation"]


def load_chip_dataset(
    source: SourceLike | ShardSelection,
    split: str | None = None,
    validation_fraction: float = 0.2,
    streaming: bool = True,
    num_shards: int | None = None,
    world_size: int = 1,
    num_workers: int = 1,
    layout: ChipLayout | None = None,
) -> IterableDataset | Dataset:
    """Chips of any format as a `datasets` dataset of the same records.

    Args:
        source: GeoTIFF chips, Clay shards or WebDataset shards: a folder, a glob, a list, a text file listing them,
            or what `resolve_chip_source` / `split_chip_source` returned.
        split: None for all chips, or "train"/"validation" of the hash split of chip file names.
        streaming: False gives the map-style dataset of `load_geotiff_dataset` (GeoTIFF chips only).
        num_shards, world_size, num_workers: as `load_geotiff_dataset`: the work-shard count is a multiple of
            world_size × workers by default.
        layout: what every chip must give (see [`ChipLayout`]; `ChipLayout.for_model(config)` for a model): by
            default the 13 v0 bands at 512×512 for GeoTIFF chips and Clay shards, never guessed from a chip;
            WebDataset shards without a layout keep their own chips' layout.
    """
    if split is not None and split not in ("train", "validation"):
        raise ValueError(f"split must be None, 'train' or 'validation', got {split!r}.")
    fmt = chip_format(source)
    if not streaming and fmt != "geotiff":
        raise ValueError(f"streaming=False is for GeoTIFF chips; {source} holds {fmt} shards (stream them).")
    if fmt == "webdataset":
        return _load_webdataset(source, split, validation_fraction, layout)
    chips = resolve_chip_source(source)
    if isinstance(chips, ShardSelection):
        if split is not None:
            chips = chips.split(split, validation_fraction)
            if not len(chips):
                raise FileNotFoundError(f"the {split} split of {source!r} is empty ({validation_fraction=}).")
        return load_shard_dataset(chips, num_shards, world_size, num_workers, layout)
    return load_geotiff_dataset(
        chips,
        streaming=streaming,
        split=split,
        validation_fraction=validation_fraction,
        num_shards=num_shards,
        world_size=world_size,
        num_workers=num_workers,
        layout=layout,
    )


def _load_webdataset(
    source: SourceLike, split: str | None, validation_fraction: float, layout: ChipLayout | None
) -> IterableDataset:
    from .webdataset import load_chip_webdataset

    files = [str(path) for path in source] if isinstance(source, (list, tuple)) else source
    dataset = load_chip_webdataset(files, layout)  # a folder, a glob, a list or one shard; layout from the shards
    if split is not None:
        dataset = dataset.filter(lambda record: split_of(record["source_url"], validation_fraction) == split)
    return dataset


__all__ = [
    "NoUsableChipsError",
    "ShardSelection",
    "check_chips_usable",
    "chip_format",
    "generate_shard_chips",
    "load_chip_dataset",
    "load_shard_dataset",
    "resolve_chip_source",
    "split_chip_source",
    "without_chips",
]
