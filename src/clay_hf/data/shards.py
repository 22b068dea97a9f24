"""Clay shards: the packed, lossless training format (`*.clayshard`), written from GeoTIFF chips and read back
bit-identical, about 4.5× faster per core than deflate GeoTIFFs in fewer bytes (figures in `benchmarks/results/`).

A shard file is:

    b"CLAYSHD1"                                   magic
    record … record                               one record per chip
    index (UTF-8 JSON)                            {"format", "version", "records": [[offset, length, name], …]}
    index CRC-32 (4 bytes, little-endian)         from version 4 (end magic b"CLAYEND4")
    index length (8 bytes, little-endian)
    b"CLAYEND4"                                   magic (b"CLAYEND1" up to version 3): a shard without it is truncated

A record is a 4-byte little-endian header length, (from version 3) the header's 4-byte CRC-32, the header (UTF-8
JSON: the chip's metadata, its raster facts and one entry per band), then each band's payload, then (version 3, a
chip with missing pixels) the missing-pixel mask: one bit per value (C, H, W), packed and compressed like a band. A band whose float values are all integers that a narrower
integer type holds exactly is stored in that type (e.g. Sentinel-2 reflectance in float32 chips → uint16; the
round trip is checked bit for bit, so -0.0 and NaN keep a band float). A band may be byte-shuffled before
compression (its `filter` is "shuffle": all first bytes of its values, then all second bytes, …; by default the
bands stored as floats, whose exponent bytes then compress well). Each payload is compressed on its own:
`zstd` (a frame with its content checksum), `lz4` (a frame with its content checksum) or `none` (with a CRC-32),
so a corrupted record is detected and skipped, never read as wrong pixels. Format version 2 added the filter;
version 3 the header checksum (a damaged header — a flipped date — is refused by name) and the missing-pixel mask
(the pixels the GeoTIFF's nodata value, NaN, ±inf or GDAL mask declared missing are missing when read back from the
shard). Version 4 added the index's CRC-32 in the footer (a damaged index — a flipped name or offset — is refused by
name, never read as other records). Versions 1 to 3 are read as before; a newer version is refused by name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO

import lz4.frame
import numpy as np
import rasterio
import zstandard
from transformers.utils.logging import get_logger

from ..utils.errors import ClayUserError, OutputError
from ..utils.outputs import OutputLock, atomic_file, make_folder, remove_partials
from .chips import Chip, ChipError, ChipLayout, fit_layout_bands, layout_channels, read_chip

logger = get_logger(__name__)

SHARD_SUFFIX = ".clayshard"
MAGIC = b"CLAYSHD1"
END_MAGIC = b"CLAYEND4"
#: The end magic of versions 1 to 3, whose footer has no index checksum.
END_MAGIC_V1 = b"CLAYEND1"
FORMAT_VERSION = 4
#: The first version whose record headers carry a CRC-32 and whose records may carry a missing-pixel mask.
MASK_VERSION = 3
#: The default codec, chosen by measurement (benchmarks/results/loader_*_v2_*.txt, the README's loader table): zstd's
#: fast level -1, with the float bands byte-shuffled, is the only codec that reads real v0-like chips at over 100
#: chips/s per core through `chip_dataloader` in fewer bytes than their deflate GeoTIFFs (77% of them); zstd:1
#: saves 16% more bytes for ~20% fewer chips/s, `--shuffle all` 24% more for ~17% fewer.
DEFAULT_CODEC = "zstd:-1"
CODECS = ("none", "lz4", "zstd")
#: Which bands are byte-shuffled before compression: those stored as floats, all (wider than a byte), or none.
SHUFFLES = ("float", "all", "none")
DEFAULT_SHUFFLE = "float"
#: Integer types tried, narrowest first, for bands of a float chip whose values are all integral.
INTEGER_CANDIDATES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)
_FOOTER_V1 = struct.Struct("<Q8s")  # versions 1-3: index length, end magic
_FOOTER = struct.Struct("<IQ8s")  # version 4: index CRC-32, index length, end magic
#: The first version whose footer carries a CRC-32 of the index.
INDEX_CHECKSUM_VERSION = 4
_HEADER_LENGTH = struct.Struct("<I")
_HEADER_PREFIX = struct.Struct("<II")  # version 3: header length, header CRC-32
_THREAD = threading.local()  # a zstd decompression context per thread (they are not thread-safe)


class ShardError(ClayUserError, ValueError):
    """A shard file or record that cannot be used; the message names the file (and the record)."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


# ---------------------------------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------------------------------


def parse_codec(spec: str) -> tuple[str, int]:
    """'zstd:3' → ('zstd', 3); 'lz4' → ('lz4', 0); 'none' → ('none', 0)."""
    name, _, level = spec.partition(":")
    if name not in CODECS:
        raise ValueError(f"unknown codec {spec!r}: use one of {CODECS}, optionally with ':LEVEL' (e.g. 'zstd:3').")
    try:
        return name, int(level) if level else (3 if name == "zstd" else 0)
    except ValueError:
        raise ValueError(f"codec {spec!r}: the level after ':' must be an integer.") from None


def compress(data: bytes | memoryview, codec: str, level: int) -> tuple[bytes, dict[str, Any]]:
    """(payload, extra header fields) of one band's bytes."""
    if codec == "zstd":
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        return compressor.compress(data), {}
    if codec == "lz4":
        return lz4.frame.compress(data, compression_level=level, content_checksum=True, store_size=True), {}
    return bytes(data), {"crc32": zlib.crc32(data)}


def decompress(payload: memoryview, band: dict[str, Any], size: int) -> bytes | memoryview:
    """One band's bytes; raises ValueError on any mismatch (codec error, checksum, size)."""
    codec = band["codec"]
    if codec == "zstd":
        data = _zstd_decompressor().decompress(payload, max_output_size=size)
    elif codec == "lz4":
        data = lz4.frame.decompress(payload)
    elif codec == "none":
        data = payload
        if zlib.crc32(data) != band.get("crc32"):
            raise ValueError("CRC-32 mismatch")
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if len(data) != size:
        raise ValueError(f"decodes to {len(data)} bytes, expected {size}")
    return data


def byte_shuffle(values: np.ndarray) -> bytes:
    """The bytes of `values` plane by plane: every value's first byte, then every value's second byte, …"""
    return np.ascontiguousarray(values.reshape(-1).view(np.uint8).reshape(-1, values.itemsize).T).tobytes()


def byte_unshuffle(data: bytes | memoryview, out: np.ndarray) -> None:
    """Undo `byte_shuffle` into `out` (contiguous, of the shuffled values' dtype), by shifting each byte plane into
    a little-endian integer view of `out` (a strided byte transpose in numpy is several times slower)."""
    width = out.itemsize
    planes = np.frombuffer(data, np.uint8).reshape(width, -1)  # (bytes per value, values)
    values = out.reshape(-1).view(f"<u{width}")  # the bytes in memory order, whatever the host's
    np.copyto(values, planes[width - 1], casting="safe")
    for plane in planes[width - 2 :: -1] if width > 1 else ():
        np.left_shift(values, 8, out=values)
        np.bitwise_or(values, plane, out=values)


def shuffles(stored: np.dtype, shuffle: str) -> bool:
    """Whether a band stored as `stored` is byte-shuffled under the `shuffle` choice (see `SHUFFLES`)."""
    if shuffle not in SHUFFLES:
        raise ValueError(f"unknown shuffle {shuffle!r}: use one of {SHUFFLES}.")
    return stored.itemsize > 1 and (shuffle == "all" or (shuffle == "float" and stored.kind == "f"))


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_THREAD, "zstd"):
        _THREAD.zstd = zstandard.ZstdDecompressor()
    return _THREAD.zstd


def narrowest_exact_dtype(band: np.ndarray) -> np.dtype:
    """The narrowest integer dtype that holds every value of a float band exactly (bit for bit), else its own."""
    if band.dtype.kind != "f" or band.size == 0:
        return band.dtype
    if not np.isfinite(band).all():  # NaN and ±inf are no integers
        return band.dtype
    low, high = band.min(), band.max()
    for candidate in INTEGER_CANDIDATES:
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            stored = band.astype(candidate)
            restored = stored.astype(band.dtype)
            if np.array_equal(restored.view(f"u{band.itemsize}"), band.view(f"u{band.itemsize}")):
                return np.dtype(candidate)
            return band.dtype  # not integral (or -0.0): a wider integer type would not help
    return band.dtype


# ---------------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RasterFacts:
    """What a chip's GeoTIFF says beyond the `Chip` fields: kept in every record."""

    crs_wkt: str | None
    transform: list[float]
    nodata: float | None
    band_names: list[str | None]
    dtype: str


def raster_facts(path: str) -> RasterFacts:
    with rasterio.open(path) as dataset:
        return RasterFacts(
            crs_wkt=None if dataset.crs is None else dataset.crs.to_wkt(),
            transform=list(dataset.transform)[:6],
            nodata=None if dataset.nodata is None else float(dataset.nodata),
            band_names=list(dataset.descriptions),
            dtype=dataset.dtypes[0],
        )


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return None  # arrays (pixels, masks) never go into the header
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def chip_metadata(chip: Chip) -> dict[str, Any]:
    """Every field of a `Chip` except its arrays, as JSON values."""
    return {
        field.name: _json_value(getattr(chip, field.name))
        for field in dataclasses.fields(chip)
        if not isinstance(getattr(chip, field.name), np.ndarray) and field.name not in ("pixels", "missing")
    }


def encode_record(
    chip: Chip,
    facts: RasterFacts,
    codec: str = DEFAULT_CODEC,
    shuffle: str = DEFAULT_SHUFFLE,
    version: int = FORMAT_VERSION,
) -> bytes:
    """A chip's record: header length and CRC-32, header JSON, band payloads, the missing-pixel mask when the chip
    has missing pixels (`chip.missing`). An older `version` (2, for tests of compatibility) has neither."""
    name, level = parse_codec(codec)
    pixels = np.ascontiguousarray(chip.pixels)  # (C, H, W)
    bands, payloads = [], []
    for band in pixels:
        stored_dtype = narrowest_exact_dtype(band)
        stored = band.astype(stored_dtype, copy=False)
        shuffled = name != "none" and shuffles(stored_dtype, shuffle)  # `none` stays a plain copy of the pixels
        payload, extra = compress(byte_shuffle(stored) if shuffled else stored.tobytes(), name, level)
        filters = {"filter": "shuffle"} if shuffled else {}
        bands.append({"dtype": stored_dtype.str, "codec": name, "length": len(payload), **filters, **extra})
        payloads.append(payload)
    header = {
        "chip": chip_metadata(chip),
        "raster": dataclasses.asdict(facts),
        "dtype": pixels.dtype.str,
        "shape": list(pixels.shape),
        "bands": bands,
    }
    if version >= MASK_VERSION and chip.missing is not None and chip.missing.any():
        payload, extra = compress(np.packbits(chip.missing.reshape(-1)).tobytes(), name, level)
        header["missing"] = {"codec": name, "length": len(payload), **extra}
        payloads.append(payload)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if version < MASK_VERSION:
        return b"".join([_HEADER_LENGTH.pack(len(header_bytes)), header_bytes, *payloads])
    return b"".join([_HEADER_PREFIX.pack(len(header_bytes), zlib.crc32(header_bytes)), header_bytes, *payloads])


def decode_header(record: memoryview, version: int = FORMAT_VERSION) -> tuple[dict[str, Any], int]:
    """(header, offset of the first payload) of a record of a shard of format `version`; from version 3 the
    header's CRC-32 is checked (a ValueError when it does not match)."""
    prefix = _HEADER_PREFIX if version >= MASK_VERSION else _HEADER_LENGTH
    if len(record) < prefix.size:
        raise ValueError(f"the record is {len(record)} bytes, shorter than its header prefix")
    length, *checksum = prefix.unpack_from(record, 0)
    start = prefix.size
    if start + length > len(record):
        raise ValueError(f"header length {length} runs past the record ({len(record)} bytes)")
    text = bytes(record[start : start + length])
    if checksum and zlib.crc32(text) != checksum[0]:
        raise ValueError("its header does not match its CRC-32 (the header is damaged)")
    return json.loads(text), start + length


def decode_missing(record: memoryview, header: dict[str, Any], offset: int) -> np.ndarray | None:
    """The record's missing-pixel mask (C, H, W) bool, or None when it has none (or is older than version 3)."""
    entry = header.get("missing")
    if entry is None:
        return None
    count, height, width = header["shape"]
    start = offset + sum(band["length"] for band in header["bands"])
    end = start + entry["length"]
    if end > len(record):
        raise ValueError("its missing-pixel mask runs past the record")
    size = (count * height * width + 7) // 8
    bits = np.frombuffer(decompress(record[start:end], entry, size), np.uint8)
    return np.unpackbits(bits, count=count * height * width).astype(bool).reshape(count, height, width)


def decode_pixels(
    record: memoryview, header: dict[str, Any], offset: int, channels: Sequence[int] | None = None
) -> np.ndarray:
    """The record's pixels (C, H, W) in their original dtype, bit-identical to what was packed; with `channels`,
    only those bands (0-based, in that order) are decoded, each straight into its slot."""
    count, height, width = header["shape"]
    pixels = np.empty((count if channels is None else len(channels), height, width), np.dtype(header["dtype"]))
    for _ in decode_into(record, header, offset, pixels, channels):
        pass
    return pixels


def decode_into(
    record: memoryview, header: dict[str, Any], offset: int, pixels: np.ndarray, channels: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """Decode the record's bands (or `channels`, 0-based, in that order) into `pixels` (C', H, W), one slot each,
    yielding each band's values in their stored dtype just after they were written (still in the CPU's cache, so
    looking at them then costs little)."""
    count, height, width = header["shape"]
    bands = header["bands"]
    if len(bands) != count:
        raise ValueError(f"{len(bands)} band entries for {count} channels")
    if pixels.shape[1:] != (height, width) or np.dtype(header["dtype"]) != pixels.dtype:
        raise ValueError(f"the record holds {header['dtype']} bands of {height}×{width} pixels, not {pixels.shape}")
    ends = (offset + np.cumsum([band["length"] for band in bands], dtype=np.int64)).tolist()
    if count and ends[-1] > len(record):
        raise ValueError(f"band {int(np.searchsorted(ends, len(record), side='right'))} runs past the record")
    starts = [offset, *ends[:-1]]
    for slot, index in enumerate(range(count) if channels is None else channels):
        yield decode_band(record[starts[index] : ends[index]], bands[index], pixels[slot])


def decode_band(payload: memoryview, band: dict[str, Any], out: np.ndarray) -> np.ndarray:
    """One band's payload into `out` (H, W), which may be wider than the stored dtype (widening back is exact);
    returns the band's values in the stored dtype (`out` itself when that is its dtype)."""
    stored = np.dtype(band["dtype"])
    data = decompress(payload, band, out.size * stored.itemsize)
    shuffle = band.get("filter")
    if shuffle is None:
        values = np.frombuffer(data, stored).reshape(out.shape)
    elif shuffle == "shuffle":
        values = out if out.dtype == stored else np.empty(out.shape, stored)
        byte_unshuffle(data, values)
    else:
        raise ValueError(f"unknown filter {shuffle!r}")
    if values is not out:
        out[...] = values
    return values


def chip_from_header(header: dict[str, Any], pixels: np.ndarray | None) -> Chip:
    """The `Chip` a record describes (fields this version's `Chip` does not know are ignored)."""
    known = {field.name: str(field.type) for field in dataclasses.fields(Chip)}
    fields = {key: value for key, value in header["chip"].items() if key in known}
    fields["date"] = dt.date.fromisoformat(fields["date"])
    for key, value in fields.items():
        if isinstance(value, list) and known[key].startswith("tuple"):
            fields[key] = tuple(value)  # bbox, transform: JSON has lists only
    return Chip(**{**fields, "pixels": pixels})


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


class ShardWriter:
    """Writes one shard file: `add` records, then `close`. The file is written through the one fault contract
    ([`atomic_file`]): under a temporary name, its index read back, fsynced, then renamed, so it appears under its
    name only when complete; a write error (a full disk) is an OutputError naming it. `inputs` (what the shard was
    packed from, see [`input_signature`]) and `settings` go into its index, so that a rerun can tell whether it is
    still the shard it would write."""

    def __init__(
        self,
        path: str | PathLike,
        inputs: Sequence[Any] | None = None,
        settings: dict[str, Any] | None = None,
        version: int = FORMAT_VERSION,
    ) -> None:
        self.path, self.version = Path(path), version
        self.inputs, self.settings = list(inputs or []), dict(settings or {})
        self._context = atomic_file(self.path, verify=read_index)
        temporary = self._context.__enter__()
        try:
            self._file: BinaryIO = temporary.open("wb")
        except OSError as error:
            self._context.__exit__(type(error), error, error.__traceback__)
            raise OutputError(self.path, error) from error
        self._records: list[list[Any]] = []
        self._offset = 0
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as error:
            self.abort()
            raise OutputError(self.path, error) from error
        self._offset += len(data)

    def add(self, record: bytes, name: str) -> None:
        self._records.append([self._offset, len(record), name])
        self._write(record)

    def __len__(self) -> int:
        return len(self._records)

    def close(self) -> Path:
        index = {"format": "clay-shard", "version": self.version, "records": self._records}
        if self.inputs or self.settings:
            index.update(inputs=self.inputs, settings=self.settings)
        data = json.dumps(index).encode()
        self._write(data)
        if self.version < INDEX_CHECKSUM_VERSION:
            self._write(_FOOTER_V1.pack(len(data), END_MAGIC_V1))
        else:
            self._write(_FOOTER.pack(zlib.crc32(data), len(data), END_MAGIC))
        try:
            self._file.close()
        except OSError as error:
            self.abort()
            raise OutputError(self.path, error) from error
        self._context.__exit__(None, None, None)  # checked, fsynced, renamed (or an OutputError)
        return self.path

    def abort(self) -> None:
        with suppress(OSError):
            self._file.close()
        aborted = RuntimeError("shard aborted")
        self._context.__exit__(RuntimeError, aborted, None)  # removes the temporary file


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}{SHARD_SUFFIX}"


def input_signature(paths: Sequence[str]) -> list[list[Any]]:
    """What a shard is packed from: [path, size, mtime in ns] of each chip (a chip that changed, moved in or out of
    the shard's range, or was added, changes it); remote chips by path only."""
    signature: list[list[Any]] = []
    for path in paths:
        try:
            status = os.stat(path)
            signature.append([str(path), status.st_size, status.st_mtime_ns])
        except OSError:
            signature.append([str(path), None, None])
    return signature


def pack_shard(
    paths: Sequence[str],
    path: str | PathLike,
    codec: str = DEFAULT_CODEC,
    shuffle: str = DEFAULT_SHUFFLE,
    inputs: Sequence[Any] | None = None,
) -> tuple[Path, int, list[str]]:
    """Pack chips into one shard file; (the file, records written, bad chips as messages naming them)."""
    writer = ShardWriter(path, inputs, {"codec": codec, "shuffle": shuffle})
    bad: list[str] = []
    try:
        for chip_path in paths:
            try:
                chip = read_chip(chip_path)
                facts = raster_facts(chip_path)
            except (ChipError, rasterio.errors.RasterioError, OSError) as error:
                message = str(error) if isinstance(error, ChipError) else f"{chip_path}: cannot be read ({error})"
                logger.warning("skipping bad chip %s", message)
                bad.append(message)
                continue
            writer.add(encode_record(chip, facts, codec, shuffle), chip.source_url)
    except BaseException:
        writer.abort()
        raise
    count = len(writer)
    return writer.close(), count, bad


@dataclass
class PackReport:
    """What `pack_shards` wrote and skipped."""

    shards: list[Path]
    chips: int
    bad: list[str]


def pack_shards(
    paths: Sequence[str],
    output_dir: str | PathLike,
    chips_per_shard: int = 256,
    prefix: str = "chips",
    codec: str = DEFAULT_CODEC,
    num_workers: int = 0,
    overwrite: bool = False,
    shuffle: str = DEFAULT_SHUFFLE,
) -> PackReport:
    """Pack chips into shards `{prefix}-{NNNNNN}.clayshard` of `chips_per_shard` chips each (in path order).

    `shuffle` chooses the bands byte-shuffled before compression (see `SHUFFLES`). Bad chips are skipped and
    reported. Shards are independent, so `num_workers` processes pack them in parallel (they end with the run,
    even when it is killed). One run writes an output folder at a time ([`OutputLock`]). A shard already in
    `output_dir` is kept (an interrupted run continues) only when its index says it was packed from exactly the
    chips (paths, sizes, modification times) and settings it would be packed from now, unless `overwrite`; shards of
    the prefix numbered past the last one are removed, so a rerun gives what an uninterrupted run gives.
    """
    parse_codec(codec)
    shuffles(np.dtype(np.float32), shuffle)  # a wrong choice fails now, not in every worker
    if chips_per_shard < 1:
        raise ValueError(f"chips_per_shard must be at least 1, got {chips_per_shard}.")
    output = make_folder(output_dir)
    with OutputLock(output):
        remove_partials(output)
        settings = {"codec": codec, "shuffle": shuffle}
        jobs, kept, chips = [], [], 0
        starts = range(0, len(paths), chips_per_shard)
        for number, start in enumerate(starts):
            target = output / shard_name(prefix, number)
            chunk = [str(path) for path in paths[start : start + chips_per_shard]]
            inputs = input_signature(chunk)
            index = None if overwrite else _reusable_index(target, inputs, settings)
            if index is not None:
                kept.append(target)
                chips += len(index)
            else:
                jobs.append((chunk, target, codec, shuffle, inputs))
        _remove_stale_shards(output, prefix, len(starts))
        try:
            results = _run_jobs(jobs, num_workers)
        except BaseException:
            remove_partials(output)  # a failed run (a full disk) leaves no temporary shard behind
            raise
    bad = [message for _, _, messages in results for message in messages]
    return PackReport(
        sorted(kept + [path for path, _, _ in results]), chips + sum(count for _, count, _ in results), bad
    )


def _reusable_index(target: Path, inputs: list[list[Any]], settings: dict[str, Any]) -> ShardIndex | None:
    """The index of an existing shard of this format version that was packed from exactly `inputs` with `settings`;
    else None (absent, damaged, of an older format, whose records may hold other values for the same chips, or
    packed from other chips)."""
    if not target.exists():
        return None
    try:
        index = read_index(target)
    except ShardError:
        return None
    same = index.version == FORMAT_VERSION and index.inputs == inputs and index.settings == settings
    return index if same else None


def _remove_stale_shards(output: Path, prefix: str, count: int) -> None:
    """Remove the prefix's shards numbered `count` or more (left by a run over more chips, or fewer per shard)."""
    for path in output.glob(f"{prefix}-*{SHARD_SUFFIX}"):
        number = path.name[len(prefix) + 1 : -len(SHARD_SUFFIX)]
        if number.isdigit() and len(number) == 6 and int(number) >= count:
            path.unlink()


def end_with_parent(parent: int, interval: float = 0.5) -> None:
    """Pool initializer: end this worker when the process that started it is gone (a `kill -9` of the parent
    leaves no worker blocked on its queue)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _run_jobs(jobs: list[tuple], num_workers: int) -> list[tuple[Path, int, list[str]]]:
    """Pack each job's shard, in `num_workers` processes when there are several; on a failure, every started job
    has ended (and no queued one starts) before the error is raised."""
    if num_workers <= 1 or len(jobs) <= 1:
        return [_pack_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=num_workers, initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_pack_job, job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _pack_job(job: tuple[list[str], Path, str, str, list]) -> tuple[Path, int, list[str]]:
    return pack_shard(*job)


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ShardIndex:
    """A shard's table of records: offsets, lengths and names (the chips' source URLs)."""

    path: str
    offsets: list[int]
    lengths: list[int]
    names: list[str]
    version: int = FORMAT_VERSION
    #: what the shard was packed from and how (version 3; empty for older shards)
    inputs: list[Any] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def _open(path: str) -> BinaryIO:
    if "://" in path:
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def read_index(path: str | PathLike, file: BinaryIO | None = None) -> ShardIndex:
    """The index of a shard; a truncated, damaged (from version 4, its CRC-32) or foreign file is a ShardError
    naming it."""
    path = str(path)
    handle = file or _open(path)
    try:
        data, checksum = _read_index_bytes(handle, path)
        if checksum is not None and zlib.crc32(data) != checksum:
            raise ShardError(path, "has a damaged index (it does not match its CRC-32): pack it again")
        try:
            index = json.loads(data)
            records = index["records"]
            version = index.get("version", 0)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ShardError(path, f"has a corrupted index ({error})") from None
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ShardError(
                path, f"is format version {version}; this clay_hf reads up to {FORMAT_VERSION} (upgrade clay_hf)"
            )
        if (checksum is not None) != (version >= INDEX_CHECKSUM_VERSION):
            raise ShardError(path, f"has a damaged index (version {version} with the footer of another version)")
    finally:
        if file is None:
            handle.close()
    return ShardIndex(
        path, [r[0] for r in records], [r[1] for r in records], [r[2] for r in records], version,
        index.get("inputs") or [], index.get("settings") or {},
    )  # fmt: skip


def _read_index_bytes(handle: BinaryIO, path: str) -> tuple[bytes, int | None]:
    """(the index's JSON bytes, its CRC-32 or None before version 4) from the end of an open shard."""
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    if size < len(MAGIC) + _FOOTER_V1.size:
        raise ShardError(path, f"is truncated or not a Clay shard ({size} bytes)")
    handle.seek(0)
    if handle.read(len(MAGIC)) != MAGIC:
        raise ShardError(path, "is not a Clay shard (wrong magic bytes at the start)")
    handle.seek(size - len(END_MAGIC))
    end = handle.read(len(END_MAGIC))
    footer = {END_MAGIC: _FOOTER, END_MAGIC_V1: _FOOTER_V1}.get(end)
    if footer is None and end[:-1] == END_MAGIC[:-1]:
        raise ShardError(path, f"has a newer footer ({end!r}) than this clay_hf reads (upgrade clay_hf)")
    if footer is None or size < len(MAGIC) + footer.size:
        raise ShardError(path, "is truncated (no complete index at its end): pack it again")
    handle.seek(size - footer.size)
    *checksum, index_length, _ = footer.unpack(handle.read(footer.size))
    if index_length > size - len(MAGIC) - footer.size:
        raise ShardError(path, "is truncated (no complete index at its end): pack it again")
    handle.seek(size - footer.size - index_length)
    return handle.read(index_length), (checksum[0] if checksum else None)


def _read_exactly(handle: BinaryIO, offset: int, length: int) -> memoryview:
    """`length` bytes of `handle` from `offset`, in this thread's reused record buffer (valid until the next read)."""
    buffer = getattr(_THREAD, "record", None)
    if buffer is None or len(buffer) < length:
        buffer = _THREAD.record = bytearray(length)
    view = memoryview(buffer)[:length]
    handle.seek(offset)
    read = handle.readinto(view)
    if read != length:
        raise ValueError(f"ends after {read} of {length} bytes")
    return view


def read_record(
    handle: BinaryIO, index: ShardIndex, position: int, read_pixels: bool = True, layout: ChipLayout | None = None
) -> tuple[Chip, RasterFacts]:
    """Record `position` of an open shard as a `Chip` (and its raster facts); a bad record is a ChipError naming
    the shard, the record number and the chip. With a `layout`, only the layout's bands are decoded and the chip is
    made to fit it (as `conform_chip`; a chip that cannot fit is a ChipError naming it)."""
    name = f"{index.path} record {position} ({index.names[position]})"
    try:
        record = _read_exactly(handle, index.offsets[position], index.lengths[position])
        header, offset = decode_header(record, index.version)
        chip = chip_from_header(header, None)
        facts = RasterFacts(**header["raster"])
        if layout is not None:
            chip.band_names, channels = layout_channels(
                chip.source_url, header["shape"], header["dtype"], facts.band_names, layout
            )
        stored = decode_missing(record, header, offset) if read_pixels else None
        if read_pixels and layout is None:
            chip.pixels = decode_pixels(record, header, offset)
            chip.missing = stored
        elif read_pixels:
            _, height, width = header["shape"]
            chip.pixels = np.empty((len(channels), height, width), np.dtype(header["dtype"]))
            decoded = decode_into(record, header, offset, chip.pixels, channels)
            ranges = [(values.min(), values.max()) for values in decoded]  # each band while it is in the cache
            stored = None if stored is None else stored[channels]
    except ChipError:
        raise  # the chip cannot fit the layout: it names itself
    except (ValueError, KeyError, TypeError, struct.error, zstandard.ZstdError, RuntimeError) as error:
        raise ChipError(name, f"is a corrupted record ({error})") from None
    if layout is not None and read_pixels:
        chip = fit_layout_bands(chip, layout, ranges, stored)
    return chip, facts


def iter_shard(path: str | PathLike, positions: Sequence[int] | None = None) -> Iterator[Chip | ChipError]:
    """The chips of one shard (or of the given record positions), a ChipError in place of each bad record."""
    with _open(str(path)) as handle:
        index = read_index(path, handle)
        for position in range(len(index)) if positions is None else positions:
            try:
                yield read_record(handle, index, position)[0]
            except ChipError as error:
                yield error


def find_shards(source: str | PathLike | Sequence[str | PathLike]) -> list[str]:
    """The shard files of a folder (recursively), a glob, a list, or a text file listing them; sorted."""
    import glob

    if isinstance(source, (list, tuple)):
        return [str(item) for item in source]
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob(f"*{SHARD_SUFFIX}"))
    if path.is_file() and path.suffix == SHARD_SUFFIX:
        return [text]
    if path.is_file():
        lines = (line.strip() for line in path.read_text().splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    return sorted(glob.glob(text, recursive=True))


__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_SHUFFLE",
    "SHARD_SUFFIX",
    "SHUFFLES",
    "PackReport",
    "RasterFacts",
    "ShardError",
    "ShardIndex",
    "ShardWriter",
    "byte_shuffle",
    "byte_unshuffle",
    "decode_into",
    "decode_pixels",
    "encode_record",
    "find_shards",
    "iter_shard",
    "narrowest_exact_dtype",
    "pack_shard",
    "pack_shards",
    "read_index",
    "read_record",
]
