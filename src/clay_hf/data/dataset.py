"""A `datasets` loader for folders (or buckets) of GeoTIFF chips, from one notebook chip to millions in training.

`datasets` has no GeoTIFF builder and no longer runs loading scripts, so this builds on its public API:
`IterableDataset.from_generator` over shards of paths (streaming), or a map-style `Dataset` of paths and
metadata whose pixels are read lazily by a transform (no Arrow copy of the pixels is ever written).
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import numpy as np
import torch
from datasets import Array3D, Dataset, Features, IterableDataset, List, Value
from transformers.utils.logging import get_logger

from ..models.clay.image_processing_clay import ClayImageProcessor, encode_dates, encode_lonlat
from .chips import Chip, ChipError, ChipLayout, chip_file_name, read_chip

logger = get_logger(__name__)

GEOTIFF_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
#: Upper bound of the automatic shard count: enough to spread work, few enough to start in seconds.
MAX_AUTO_SHARDS = 4096


# ---------------------------------------------------------------------------------------------------------------------
# Sources, shards and the split
# ---------------------------------------------------------------------------------------------------------------------


def resolve_sources(source: str | PathLike | Sequence[str | PathLike]) -> list[str]:
    """A folder (searched recursively), a glob, a list of paths/URLs, or a text file listing them → sorted list.

    Object stores (`s3://…/`, `/vsis3/…/*.tif`, any fsspec protocol) and archives (`/vsizip/a.zip/*.tif`,
    `/vsitar/…`) are listed too: a URL that ends with `/`, names no GeoTIFF or holds a glob is expanded.
    """
    if isinstance(source, (list, tuple)):
        return [str(item) for item in source]
    text = str(source)
    if _is_url(text):
        paths = list_remote_chips(text)
    else:
        path = Path(text)
        if path.is_dir():
            paths = sorted(str(p) for p in path.rglob("*") if p.suffix in GEOTIFF_SUFFIXES)
        elif path.is_file() and path.suffix not in GEOTIFF_SUFFIXES:
            lines = (line.strip() for line in path.read_text().splitlines())
            paths = [line for line in lines if line and not line.startswith("#")]
        elif path.is_file():
            paths = [text]
        else:
            paths = sorted(glob.glob(text, recursive=True))
    if not paths:
        raise FileNotFoundError(f"no GeoTIFF chips found in {text!r} (a folder, a glob, a list file or a URL).")
    return paths


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("/vsi")


#: GDAL virtual file systems → fsspec protocols, for listing.
VSI_PROTOCOLS = {"/vsis3/": "s3://", "/vsigs/": "gs://", "/vsiaz/": "az://", "/vsiadls/": "abfs://"}
#: Protocols without folders to list (a web server's pages are not a listing): their URLs are taken as they are.
NOT_LISTABLE = frozenset({"http", "https", "ftp"})
ARCHIVE_PATTERN = re.compile(r"^/vsi(?P<kind>zip|tar)/(?P<archive>.+?\.(?:zip|tar|tar\.gz|tgz))(?:/(?P<inner>.*))?$")


def list_remote_chips(url: str) -> list[str]:
    """The chips a URL or GDAL path names, listed with fsspec: itself when it names one GeoTIFF, else every GeoTIFF
    under it (a folder, `…/`) or matching it (a glob). Paths come back in the spelling given (GDAL reads them)."""
    archive = ARCHIVE_PATTERN.match(url)
    if archive is not None:
        return _list_archive(url, archive["kind"], archive["archive"], archive["inner"] or "")
    listed_as, prefix = url, ""
    for vsi, protocol in VSI_PROTOCOLS.items():
        if url.startswith(vsi):
            listed_as, prefix = protocol + url[len(vsi) :], vsi
    parts = urlsplit(listed_as)
    listable = parts.scheme in fsspec.available_protocols() and parts.scheme not in NOT_LISTABLE
    if not listable or not _needs_listing(parts.path):
        return [url]
    filesystem, root = _filesystem(url, listed_as)
    found = _find_geotiffs(filesystem, root, parts.path)
    if not found and not (glob.has_magic(parts.path) or parts.path.endswith("/")):
        return [url]  # one object whose name has no GeoTIFF suffix
    if prefix:
        return sorted(prefix + filesystem._strip_protocol(path).lstrip("/") for path in found)
    return sorted(filesystem.unstrip_protocol(path) for path in found)


def fsspec_url(path: str) -> str:
    """The fsspec spelling of a local path, URL or GDAL path: `/vsis3/b/k` → `s3://b/k`, `/vsizip/a.zip/m.tif` →
    `zip://m.tif::a.zip`, `/vsicurl/https://…` → `https://…`."""
    archive = ARCHIVE_PATTERN.match(path)
    if archive is not None:
        return f"{archive['kind']}://{archive['inner'] or ''}::{fsspec_url(archive['archive'])}"
    if path.startswith("/vsicurl/"):
        return path[len("/vsicurl/") :]
    for vsi, protocol in VSI_PROTOCOLS.items():
        if path.startswith(vsi):
            return protocol + path[len(vsi) :]
    return path


def _needs_listing(path: str) -> bool:
    return path.endswith("/") or glob.has_magic(path) or not path.endswith(GEOTIFF_SUFFIXES)


def _filesystem(url: str, listed_as: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.core.url_to_fs(listed_as, **options)
    except ImportError as error:
        raise ImportError(
            f"listing {url} needs an fsspec filesystem that is not installed ({error}); install it (for S3: "
            "pip install 'clay_hf[s3]'), or give a text file that lists the chips"
        ) from None


def _find_geotiffs(filesystem: fsspec.AbstractFileSystem, root: str, path: str) -> list[str]:
    """GeoTIFFs matching a glob, or under a folder (recursively)."""
    found = filesystem.glob(root) if glob.has_magic(path) else filesystem.find(root)
    return [item for item in found if item.endswith(GEOTIFF_SUFFIXES)]


def _list_archive(url: str, kind: str, archive: str, inner: str) -> list[str]:
    """Members of a zip or tar archive (local, or on any store fsspec or GDAL names) matching `inner`."""
    target = fsspec_url(archive)
    if not _needs_listing(inner or "/"):
        return [url]
    try:
        with fsspec.open(target, "rb") as handle:
            filesystem = fsspec.filesystem(kind, fo=handle)
            members = _find_geotiffs(filesystem, inner or "", inner or "/")
    except ImportError as error:
        raise ImportError(f"listing {url} needs an fsspec filesystem that is not installed ({error})") from None
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{url}: the archive {archive} cannot be listed ({error})") from None
    return sorted(f"/vsi{kind}/{archive}/{member.lstrip('/')}" for member in members)


def auto_num_shards(num_paths: int, world_size: int = 1, num_workers: int = 1) -> int:
    """A shard count that is a multiple of world_size × max(num_workers, 1), as large as the data allows
    up to about `MAX_AUTO_SHARDS`, so every rank and worker reads disjoint shards."""
    unit = world_size * max(num_workers, 1)
    per_unit = max(1, min(num_paths // unit, math.ceil(MAX_AUTO_SHARDS / unit)))
    return unit * per_unit


def shard_paths(paths: Sequence[str], num_shards: int) -> list[list[str]]:
    """Split paths into `num_shards` contiguous shards of near-equal size (some may be empty if paths are few)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}.")
    bounds = np.linspace(0, len(paths), num_shards + 1).round().astype(int)
    return [list(paths[start:stop]) for start, stop in itertools.pairwise(bounds)]


def split_of(path: str, validation_fraction: float = 0.2) -> str:
    """'train' or 'validation', from a hash of the file NAME (no folders, GDAL `/vsi…` prefix or URL query string):
    stable across runs, machines, storage places and signed URLs of the same chip."""
    name = chip_file_name(path)
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return "validation" if digest / 2**64 < validation_fraction else "train"


def split_paths(paths: Sequence[str], validation_fraction: float = 0.2) -> dict[str, list[str]]:
    """The deterministic train/validation split (v0 used 80/20)."""
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for path in paths:
        splits[split_of(path, validation_fraction)].append(path)
    return splits


# ---------------------------------------------------------------------------------------------------------------------
# Features and reading
# ---------------------------------------------------------------------------------------------------------------------


def chip_features(num_bands: int, height: int, width: int, dtype: str, with_pixels: bool = True) -> Features:
    """The explicit schema of a chip record (pixels in the layout's dtype).

    A streamed record is either a chip (`bad_chip` empty) or a bad chip that was skipped (`bad_chip` says why, the
    other fields are placeholders): bad chips travel in the stream so that every one is counted where it is met,
    whatever its place (first, last, alone in a shard, at a worker's tail, on any rank). [`collate_chips`] takes
    them out of the batch and counts them.
    """
    fields: dict[str, Any] = {}
    if with_pixels:
        fields["pixels"] = Array3D(shape=(num_bands, height, width), dtype=dtype)
    fields.update(
        date=Value("date32"),
        lon=Value("float64"),
        lat=Value("float64"),
        bbox=List(Value("float64"), length=4),
        epsg=Value("int32"),
        crs=Value("string"),
        transform=List(Value("float64"), length=6),
        source_url=Value("string"),
        nodata_fraction=Value("float32"),
    )
    if with_pixels:
        fields["bad_chip"] = Value("string")
    return Features(fields)


def bad_record(error: ChipError, shape: tuple[int, int, int], dtype: str) -> dict[str, Any]:
    """The stream's record of a skipped chip: its name and problem, placeholder pixels (never used)."""
    return {
        "pixels": np.zeros(shape, dtype=dtype),
        "date": dt.date(1970, 1, 1),
        "lon": 0.0,
        "lat": 0.0,
        "bbox": [0.0, 0.0, 0.0, 0.0],
        "epsg": -1,
        "crs": "",
        "transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "source_url": error.source,
        "nodata_fraction": 0.0,
        "bad_chip": error.problem or "bad chip",
    }


class BadChipLog:
    """The one way to skip a bad chip: counts it and warns, naming it and why (a long job never stops for one bad
    chip); with `keep`, the skipped chips' errors are kept too (`errors`, for a report that names them). `count` is
    this log's; the "(N skipped so far)" of the warnings counts every skip of the process, however the work is sliced
    into shards and generator calls. Each DataLoader worker is a process of its own, so there the warning says whose
    count it is ("(N skipped so far by DataLoader worker 1)"); the run's totals are counted in the main process, from
    the batches (see [`collate_chips`])."""

    #: skips in this process, over every log (a forked worker starts from 0, not from its parent's count)
    skipped_in_process = 0
    _process = os.getpid()

    def __init__(self, keep: bool = False) -> None:
        self.count = 0
        self.keep = keep
        self.errors: list[ChipError] = []

    def skip(self, error: ChipError) -> None:
        self.count += 1
        if self.keep:
            self.errors.append(error)
        if BadChipLog._process != os.getpid():
            BadChipLog._process, BadChipLog.skipped_in_process = os.getpid(), 0
        BadChipLog.skipped_in_process += 1
        logger.warning("skipped %s (%d skipped so far%s)", error, BadChipLog.skipped_in_process, _counted_by())

    def record(self, error: ChipError, layout: ChipLayout) -> dict[str, Any]:
        """Count and report a bad chip, and give its record in the stream (a [`bad_record`] of `layout`)."""
        self.skip(error)
        return bad_record(error, layout.shape, layout.dtype)


def _counted_by() -> str:
    """Whose count a skip warning gives: "" in the main process, " by DataLoader worker N" in a worker."""
    worker = torch.utils.data.get_worker_info()
    return "" if worker is None else f" by DataLoader worker {worker.id}"


def generate_chips(shards: Sequence[Sequence[str]], layout: ChipLayout) -> Iterator[dict[str, Any]]:
    """The generator behind the streaming loader: reads each chip of the given shards to `layout`.

    `datasets` hands each call a SLICE of the outer shard list, so the shards are flattened here. A bad chip is
    logged and yielded as a [`bad_record`], so that it is counted in the batch it falls in.
    """
    log = BadChipLog()
    for shard in shards:
        for path in shard:
            try:
                yield read_chip(path, layout=layout).to_example()
            except ChipError as error:
                yield log.record(error, layout)


def read_metadata(
    paths: Sequence[str], num_threads: int = 8, layout: ChipLayout | None = None
) -> tuple[list[Chip], list[ChipError]]:
    """Read the headers (not the pixels) of many chips in parallel threads; bad chips are returned apart."""

    def read(path: str) -> Chip | ChipError:
        try:
            return read_chip(path, read_pixels=False, layout=layout)
        except ChipError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = list(pool.map(read, paths))
    return [r for r in results if isinstance(r, Chip)], [r for r in results if isinstance(r, ChipError)]


# ---------------------------------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------------------------------


def load_geotiff_dataset(
    source: str | PathLike | Sequence[str | PathLike],
    streaming: bool = True,
    split: str | None = None,
    validation_fraction: float = 0.2,
    num_shards: int | None = None,
    world_size: int = 1,
    num_workers: int = 1,
    layout: ChipLayout | None = None,
    num_threads: int = 8,
) -> IterableDataset | Dataset:
    """Load GeoTIFF chips as a `datasets` dataset.

    Args:
        source: a folder, a glob, a list of paths/URLs, or a text file listing them.
        streaming: an `IterableDataset` reading chips as it goes (training), or a map-style `Dataset` of metadata
            whose `pixels` are read lazily on access.
        split: `None` for all chips, or "train"/"validation" of the deterministic hash split.
        num_shards: streaming shards; by default a multiple of `world_size × num_workers` (see `auto_num_shards`),
            so `datasets.distributed.split_dataset_by_node` gives each rank disjoint shards.
        layout: the bands (by name), size and dtype every chip must give, and whether missing pixels are filled
            (see [`ChipLayout`]; `ChipLayout.for_model(config)` for a model). By default the 13 v0 bands at 512×512,
            float32, chips with missing pixels bad. Never guessed from the chips.
        num_threads: threads reading headers for the map-style dataset.

    Shuffle with `dataset.shuffle(seed=…, buffer_size=…)` (shard order + buffer), reshuffle with `set_epoch`,
    resume with `state_dict()`/`load_state_dict()`. Bad chips are skipped with a warning naming them; streamed,
    each yields a record whose `bad_chip` says why (see [`chip_features`]).
    """
    paths = resolve_sources(source)
    if split is not None:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be None, 'train' or 'validation', got {split!r}.")
        paths = split_paths(paths, validation_fraction)[split]
        if not paths:
            raise FileNotFoundError(f"the {split} split of {source!r} is empty ({validation_fraction=}).")
    layout = layout or ChipLayout()
    if streaming:
        shards = shard_paths(paths, num_shards or auto_num_shards(len(paths), world_size, num_workers))
        return IterableDataset.from_generator(
            generate_chips,
            gen_kwargs={"shards": shards, "layout": layout},
            features=chip_features(*layout.shape, layout.dtype),
        )
    return _map_style_dataset(paths, layout, num_threads)


def _map_style_dataset(paths: Sequence[str], layout: ChipLayout, num_threads: int) -> Dataset:
    chips, errors = read_metadata(paths, num_threads, layout)
    log = BadChipLog()
    for error in errors:
        log.skip(error)
    records = [chip.to_example() for chip in chips]
    features = chip_features(*layout.shape, layout.dtype, with_pixels=False)
    dataset = Dataset.from_dict({key: [record[key] for record in records] for key in features}, features=features)
    dataset.info.description = f"{len(errors)} bad chips skipped"
    return dataset.with_transform(PixelReader(layout))


class PixelReader:
    """`with_transform` function: adds `pixels` (the layout's dtype) to a batch of metadata rows by reading the
    files; a chip whose pixels turn out bad (e.g. nodata) raises a ChipError naming it."""

    def __init__(self, layout: ChipLayout) -> None:
        self.layout = layout

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        batch["pixels"] = [read_chip(url, layout=self.layout).pixels for url in batch["source_url"]]
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------------------------


def worker_start_method(num_workers: int) -> str | None:
    """`forkserver` when workers would decode with GDAL threads, else the default (fork on Linux).

    GDAL's decoding thread pool does not survive `fork`: a forked worker of a process that already decoded with
    GDAL_NUM_THREADS other than 1 deadlocks.
    """
    if num_workers > 0 and os.environ.get("GDAL_NUM_THREADS", "1") not in ("", "1"):
        return "forkserver"
    return None


def chip_dataloader(
    dataset: IterableDataset | Dataset, batch_size: int, num_workers: int = 0, **kwargs: Any
) -> torch.utils.data.DataLoader:
    """A DataLoader over chips with [`collate_chips`], workers started safely (see [`worker_start_method`])."""
    kwargs.setdefault("multiprocessing_context", worker_start_method(num_workers))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_chips, **kwargs
    )


def model_inputs(
    batch: dict[str, Any], processor: ClayImageProcessor, device: torch.device, bands: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """A collated batch → ClayModel inputs on `device`: the compact pixels travel, then are normalised there.
    `bands` names the pixels' channels (the model's bands); see [`drop_nonfinite_chips`] for the guard."""
    pixels = batch["pixels"].to(device, non_blocking=True)
    return {
        "pixel_values": processor.normalize_tensor(pixels, bands),
        "timestep": batch["timestep"].to(device, non_blocking=True),
        "latlon": batch["latlon"].to(device, non_blocking=True),
    }


def drop_nonfinite_chips(batch: dict[str, Any], inputs: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Take chips whose normalised pixels are not all finite out of the batch and its inputs, counting them in
    `bad_chips` (a last guard on the device: readers already refuse NaN, ±inf and nodata)."""
    finite = torch.isfinite(inputs["pixel_values"]).flatten(1).all(dim=1)  # (B,)
    if bool(finite.all()):
        return batch, inputs
    keep = finite.cpu()
    for url in (url for url, ok in zip(batch["source_url"], keep.tolist(), strict=True) if not ok):
        logger.warning("skipped %s: non-finite values after normalisation", url)
    batch = _select(batch, keep)
    batch["bad_chips"] += int((~keep).sum())
    return batch, {key: value[finite] for key, value in inputs.items()}


#: The entries of a collated batch that hold one item per chip.
PER_CHIP_KEYS = (
    "pixels",
    "timestep",
    "latlon",
    "date",
    "bbox",
    "epsg",
    "crs",
    "transform",
    "source_url",
    "nodata_fraction",
)


def _select(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The chips of a collated batch where `keep` (B,) is True."""
    selected = dict(batch)
    for key in (key for key in PER_CHIP_KEYS if key in batch):
        value = batch[key]
        if isinstance(value, torch.Tensor):
            selected[key] = value[keep]
        else:
            selected[key] = [item for item, kept in zip(value, keep.tolist(), strict=True) if kept]
    return selected


def stack_pixels(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """The chips' pixels as one (B, C, H, W) tensor, copied once: in a DataLoader worker straight into shared memory
    (as `default_collate` does), so the batch is not copied again on its way to the main process."""
    if torch.utils.data.get_worker_info() is None:  # numpy backs a large array with huge pages: fewer page faults
        return torch.from_numpy(np.stack([np.asarray(array) for array in arrays]))
    return torch.utils.data.default_collate([torch.from_numpy(np.asarray(array)) for array in arrays])


def collate_chips(examples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Stack chip records into a batch with compact pixels (the layout's dtype, e.g. uint16 or float32; no
    widening) and the v0 `timestep` and `latlon` encodings. Normalise on the device
    (`ClayImageProcessor.normalize_tensor`).

    Records of bad chips are taken out and counted: `bad_chips` (their number) and `bad_chip_sources` (their
    names). A batch may hold no chip at all when all its records were bad.
    """
    records = list(examples)
    examples = [example for example in records if not example.get("bad_chip")]
    bad = [example for example in records if example.get("bad_chip")]
    grids = [example.get("transform") for example in examples]
    shape = np.asarray(records[0]["pixels"]).shape if records else (0, 0, 0)
    if examples:
        pixels = stack_pixels([example["pixels"] for example in examples])
    else:
        pixels = torch.from_numpy(np.empty((0, *shape), dtype=np.asarray(records[0]["pixels"]).dtype))
    lonlat = np.array([[example["lon"], example["lat"]] for example in examples], dtype=np.float64).reshape(-1, 2)
    return {
        "pixels": pixels,
        "timestep": torch.from_numpy(encode_dates([example["date"] for example in examples])),
        "latlon": torch.from_numpy(encode_lonlat(lonlat)),
        "date": [example["date"] for example in examples],
        "bbox": torch.tensor([list(example["bbox"]) for example in examples], dtype=torch.float64).reshape(-1, 4),
        "epsg": torch.tensor([example["epsg"] for example in examples], dtype=torch.int32),
        "crs": [example.get("crs") or "" for example in examples],
        "source_url": [example["source_url"] for example in examples],
        "nodata_fraction": torch.tensor([example.get("nodata_fraction", 0.0) for example in examples]),
        "bad_chips": len(bad),
        "bad_chip_sources": [example["source_url"] for example in bad],
        **(
            {"transform": torch.tensor([list(grid) for grid in grids], dtype=torch.float64).reshape(-1, 6)}
            if all(grid is not None for grid in grids)
            else {}
        ),
    }


__all__ = [
    "ChipLayout",
    "auto_num_shards",
    "bad_record",
    "chip_dataloader",
    "chip_features",
    "collate_chips",
    "drop_nonfinite_chips",
    "generate_chips",
    "list_remote_chips",
    "load_geotiff_dataset",
    "model_inputs",
    "read_metadata",
    "resolve_sources",
    "shard_paths",
    "split_of",
    "split_paths",
]
