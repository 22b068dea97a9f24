"""WebDataset tar shards of chips (`{key}.tif` + `{key}.json`): the form in which a chip collection goes to the Hub.

`load_dataset("webdataset", data_files=…, streaming=True)` reads the shards; [`load_chip_webdataset`] decodes each
sample through the same reader as the GeoTIFF loader ([`read_chip`]), so both give identical records.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import tarfile
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from datasets import Image, IterableDataset, load_dataset
from rasterio.io import MemoryFile
from transformers.utils.logging import get_logger

from ..utils.errors import IntegrityError
from ..utils.outputs import OutputLock, atomic_file, make_folder, remove_partials
from .bands import declared_scaling, scaled_dtype
from .chips import ChipError, ChipLayout, chip_band_names, data_band_indexes, nodata_error, read_chip
from .dataset import BadChipLog, chip_features, fsspec_url

logger = get_logger(__name__)


def sample_key(path: str) -> str:
    """A WebDataset key from a chip path: the file name without its extension, with no dots (they split fields)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0].replace(".", "-")


def pack_webdataset(
    paths: Sequence[str],
    output_dir: str | PathLike,
    chips_per_shard: int = 256,
    prefix: str = "chips",
    resume: bool = False,
) -> tuple[list[Path], list[ChipError]]:
    """Pack chips into tar shards `{prefix}-{NNNNNN}.tar`; a bad chip (unreadable, no CRS or date, missing values)
    is skipped and returned.

    Each shard is written atomically (the one fault contract: a temporary name, read back, fsynced, renamed), so an
    interrupted run leaves only complete shards, and one run writes an output folder at a time. `resume=True` keeps
    them, packs only the chips they lack and numbers new shards with the lowest free numbers; a damaged shard (see
    [`check_tar`]) is removed and its chips packed again, under its number when the chips are the same, so the
    rerun gives what an uninterrupted run gives. Without `resume` the prefix's shards are written anew and older
    ones numbered past them removed.
    """
    output = make_folder(output_dir)
    with OutputLock(output):
        remove_partials(output)
        shards, done = _intact_shards(output, prefix) if resume else ([], set())
        bad: list[ChipError] = []
        samples = _readable_samples([path for path in paths if sample_key(str(path)) not in done], bad)
        taken = {_shard_number(shard) for shard in shards}
        numbers = (number for number in itertools.count() if number not in taken)
        while chunk := list(itertools.islice(samples, chips_per_shard)):
            shard = output / f"{prefix}-{next(numbers):06d}.tar"
            with atomic_file(shard, verify=check_tar) as staging, tarfile.open(staging, "w") as archive:
                for key, data, metadata in chunk:
                    _add(archive, f"{key}.tif", data)
                    _add(archive, f"{key}.json", json.dumps(metadata).encode())
            shards.append(shard)
        if not resume:
            for stale in set(output.glob(f"{prefix}-*.tar")) - set(shards):
                stale.unlink()
    return sorted(shards), bad


def check_tar(path: str | PathLike) -> list[str]:
    """The member names of a tar shard, read through to its end; a truncated or damaged tar (a member header that
    fails its checksum, which tarfile takes for the archive's end, or data cut short) is an [`IntegrityError`]
    naming it."""
    path = str(path)
    try:
        with fsspec.open(path, "rb") as handle:
            with tarfile.open(fileobj=handle, mode="r:") as archive:
                names = archive.getnames()
                end = archive.offset  # where tarfile stopped: the end-of-archive blocks of a whole tar
            handle.seek(end)
            trailer = handle.read()
    except FileNotFoundError:
        raise
    except (tarfile.TarError, EOFError, OSError) as error:
        raise IntegrityError(f"{path} is a damaged or truncated tar shard ({error})") from None
    if len(trailer) < 2 * tarfile.BLOCKSIZE or trailer.count(0) != len(trailer):
        raise IntegrityError(
            f"{path} is a damaged or truncated tar shard (its members end at byte {end}, not followed by the "
            "end-of-archive blocks)"
        )
    return names


def _intact_shards(output: Path, prefix: str) -> tuple[list[Path], set[str]]:
    """The prefix's shards in `output` that `check_tar` accepts, and the sample keys they hold; damaged ones are
    removed (a warning names each), so that their chips are packed again."""
    shards, keys = [], set()
    for shard in sorted(output.glob(f"{prefix}-*.tar")):
        try:
            names = check_tar(shard)
        except IntegrityError as error:
            logger.warning("packing the chips of a damaged shard again: %s", error)
            shard.unlink()
            continue
        shards.append(shard)
        keys.update(name.rsplit(".", 1)[0] for name in names)
    return shards, keys


def _shard_number(shard: Path) -> int:
    return int(shard.stem.rsplit("-", 1)[1])


def _readable_samples(paths: Sequence[str], bad: list[ChipError]) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(key, GeoTIFF bytes, metadata) of each good chip; the others are logged and appended to `bad`."""
    log = BadChipLog()
    for path in paths:
        try:
            chip = read_chip(path)
            if chip.missing is not None:
                raise nodata_error(chip)
            data = _read_bytes(str(path))
        except ChipError as error:
            log.skip(error)
            bad.append(error)
            continue
        metadata = {"date": chip.date.isoformat(), "source_url": chip.source_url, **_extra_tags(chip.tags)}
        yield sample_key(str(path)), data, metadata


def _read_bytes(path: str) -> bytes:
    """The file's bytes, from a local path, a URL or a GDAL `/vsi…` path (through fsspec)."""
    try:
        with fsspec.open(fsspec_url(path), "rb") as handle:
            return handle.read()
    except (OSError, ImportError, ValueError) as error:
        raise ChipError(path, f"cannot be read for packing ({error})") from None


def _extra_tags(tags: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in tags.items() if key not in ("date", "AREA_OR_POINT")}


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def decode_samples(batch: dict[str, list[Any]], layout: ChipLayout) -> dict[str, list[Any]]:
    """Batched map: WebDataset samples → chip records; a bad sample becomes a `bad_record` (counted by the collate)."""
    records: list[dict[str, Any]] = []
    log = BadChipLog()
    for tif, metadata, key in zip(batch["tif"], batch["json"], batch["__key__"], strict=True):
        metadata = metadata or {}
        name = metadata.get("source_url") or f"{key}.tif"
        try:
            if tif is None:
                raise ChipError(name, "has no .tif member in its WebDataset sample")
            with MemoryFile(tif["bytes"]) as memory:
                chip = read_chip(memory, date=metadata.get("date"), source_url=name, layout=layout)
        except ChipError as error:
            records.append(log.record(error, layout))
            continue
        records.append(chip.to_example())
    return {key: [record[key] for record in records] for key in chip_features(1, 1, 1, "float32")}


def resolve_shards(data_files: str | PathLike | Sequence[str]) -> list[str]:
    """Shard paths from a folder (its `*.tar`, recursively), a glob, a list, or one shard; local or any fsspec URL."""
    if isinstance(data_files, (list, tuple)):
        return [str(item) for item in data_files]
    text = str(data_files)
    if "://" in text:
        filesystem, root = fsspec.core.url_to_fs(text)
        if text.endswith(".tar") and not glob.has_magic(text):
            return [text]
        found = filesystem.glob(root) if glob.has_magic(text) else filesystem.find(root)
        shards = sorted(filesystem.unstrip_protocol(path) for path in found if path.endswith(".tar"))
    elif Path(text).is_dir():
        shards = sorted(str(path) for path in Path(text).rglob("*.tar"))
    else:
        shards = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
    if not shards:
        raise FileNotFoundError(f"no WebDataset shards (*.tar) in {text!r}")
    return shards


def shard_layout(shard: str) -> ChipLayout:
    """The layout of the first chip in a shard (its bands by name, size and dtype), read from its GeoTIFF header;
    bands without clay names in their descriptions are taken whole, in the file's order."""
    with fsspec.open(shard, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
        for member in archive:
            if member.isfile() and member.name.lower().endswith((".tif", ".tiff")):
                data = archive.extractfile(member).read()
                with MemoryFile(data) as memory, memory.open() as dataset:
                    data_bands = data_band_indexes(dataset)
                    descriptions = [dataset.descriptions[index - 1] for index in data_bands]
                    named = chip_band_names(f"{shard}/{member.name}", len(data_bands), descriptions)
                    unnamed = named is None or None in named
                    bands = tuple(
                        (named[position] if named else None) or f"band{position + 1}"
                        for position in range(len(data_bands))
                    )
                    rescaled = declared_scaling(dataset, data_bands, named)  # read in v0's unit, as float
                    dtype = scaled_dtype(dataset.dtypes[0]) if rescaled else np.dtype(dataset.dtypes[0])
                    return ChipLayout(
                        bands=bands,
                        size=(dataset.height, dataset.width),
                        dtype=dtype.name,
                        chip_bands=bands if unnamed else None,  # unnamed bands: all of them, in the file's order
                    )
    raise ChipError(shard, "holds no .tif member, so the chips' layout is unknown")


def load_chip_webdataset(
    data_files: str | PathLike | Sequence[str], layout: ChipLayout | None = None
) -> IterableDataset:
    """Stream WebDataset chip shards (a folder, a glob, a list or one shard) as the same records (and features) as
    `load_geotiff_dataset`. Chips must fit `layout` (`ChipLayout.for_model(config)` when a model reads them); without
    one, the shards' own layout (the first chip's bands, size and dtype). Chips that do not fit are skipped and
    counted. A damaged or truncated local shard is an [`IntegrityError`] naming it ([`check_tar`])."""
    shards = resolve_shards(data_files)
    for shard in shards:
        if "://" not in shard:  # a local shard is checked whole (its member headers): cheap, unlike a remote one
            check_tar(shard)
    layout = layout or shard_layout(shards[0])
    dataset = load_dataset("webdataset", data_files=shards, streaming=True, split="train")
    dataset = dataset.cast_column("tif", Image(decode=False))
    return dataset.map(
        decode_samples,
        batched=True,
        batch_size=16,
        remove_columns=list(dataset.column_names or ["tif", "json", "__key__", "__url__"]),
        fn_kwargs={"layout": layout},
        features=chip_features(*layout.shape, layout.dtype),
    )


__all__ = [
    "check_tar",
    "decode_samples",
    "load_chip_webdataset",
    "pack_webdataset",
    "resolve_shards",
    "sample_key",
    "shard_layout",
]
