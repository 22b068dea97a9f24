"""Embeddings of GeoTIFF chips → GeoParquet (the v0 embeddings format), streamed and resumable.

Columns: `source_url` (string), `date` (date32), `embeddings` (fixed-size list of float32, or float16 when asked),
`geometry` (the chip's footprint as a WKB Polygon, or MultiPolygon split at the antimeridian, in OGC:CRS84; see
`clay_hf.utils.geometry`), `nodata_fraction` (float32: the share of the chip's values that were missing and filled; 0 for
clean chips) and, when asked, `reconstruction_error` (float32: the chip's masked reconstruction error, see
[`clay_hf.evaluation.reconstruction.chip_reconstruction_errors`]; high values flag unusual places). The file's `geo` metadata
follows GeoParquet 1.1; `clay:embeddings` records the level, the shape of each embedding, its dtype, the model and
how reconstruction errors were masked.

Work is written in parts (`OUT.parquet.parts/part-NNNNN.parquet`, each written atomically with Parquet page
checksums and its SHA-256 recorded in the folder's `checksums.sha256`, numbered after the highest existing one), so
an interrupted run loses at most one part and `resume=True` skips every chip already in a part, matched by its real
path (however the folder is spelled, symlinks included; URLs without their query). Every part records the level,
shape and model; a resume with another model is refused, and a damaged part is refused by name. When all chips are
done the parts are joined into OUT.parquet (atomically, its row count checked). One run writes an output at a time:
the main process holds `OUT.parquet.lock` (see `clay_hf.utils.outputs.OutputLock`).

Launched as several processes (`accelerate launch`), each rank embeds its own contiguous share of the chips not yet
done and writes its parts under `OUT.parquet.parts/rank-NNNNN/`; the main process waits for every rank's report,
joins all parts (in source order for an uninterrupted run) and reports the throughput in all and per rank.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from shapely import MultiPolygon, Polygon, from_wkb, to_wkb
from transformers.utils.logging import get_logger

from ..data.chips import ChipLayout, chip_key
from ..data.dataset import chip_dataloader, drop_nonfinite_chips, model_inputs
from ..data.sources import NoUsableChipsError, ShardSelection, load_chip_dataset, resolve_chip_source, without_chips
from ..evaluation.reconstruction import VALIDATION_MASKING_SEED, chip_reconstruction_errors, masking_description
from ..models.clay.image_processing_clay import ClayImageProcessor, load_image_processor
from ..models.clay.modeling_clay import ClayForMaskedImageModeling, ClayModel
from ..utils.errors import ClayUserError, IntegrityError, ResumeError
from ..utils.geometry import lonlat_bbox
from ..utils.model_source import from_pretrained_checked, model_reference, model_revision
from ..utils.outputs import (
    OutputLock,
    add_checksums,
    atomic_file,
    make_folder,
    read_checksums,
    remove_partials,
    verify_file,
)
from .geoparquet import chip_footprint, geo_metadata
from .ranks import (
    RANK_TIMEOUT_SECONDS,
    Rank,
    RankReport,
    clear_reports,
    shard,
    throughput,
    wait_for_reports,
    write_report,
)

logger = get_logger(__name__)

LEVELS = ("mean", "patch", "group")
#: Schema metadata key of the embedding level and shape (in the output and in every part).
SHAPE_KEY = b"clay:embeddings"
EMBEDDINGS_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


@dataclass
class EmbeddingRun:
    """What an embedding run did."""

    output: Path
    embedded: int
    skipped_done: int
    bad_chips: int
    shape: tuple[int, ...]
    throughput: str = ""


def load_encoder(model_name_or_path: str, device: str | torch.device = "cpu") -> tuple[ClayModel, ClayImageProcessor]:
    """The encoder and its saved processor (or the v0 processor for the model's bands, if none was saved)."""
    model = from_pretrained_checked(ClayModel, model_name_or_path).to(device).eval()
    return model, load_image_processor(model_name_or_path, model.config.band_names)


def embedding_shape(model: ClayModel, level: str, image_size: int | tuple[int, int]) -> tuple[int, ...]:
    """(D,) for `mean`, (h, w, D) for `patch`, (G, h, w, D) for `group`; `image_size` is a side or (height, width)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rows, cols = height // model.config.patch_size, width // model.config.patch_size
    dim = model.config.hidden_size
    return {"mean": (dim,), "patch": (rows, cols, dim), "group": (model.config.num_groups, rows, cols, dim)}[level]


def embed_batch(model: ClayModel, inputs: dict[str, torch.Tensor], level: str) -> torch.Tensor:
    """(B, …) float32 embeddings at `level` (see [`embedding_shape`]), flattened per chip."""
    outputs = model(**inputs)
    if level == "mean":
        return outputs.pooler_output.float()
    batch_size = inputs["pixel_values"].shape[0]
    height, width = (size // model.config.patch_size for size in inputs["pixel_values"].shape[-2:])
    tokens = outputs.last_hidden_state[:, :-2].float()  # (B, G·L, D)
    tokens = tokens.view(batch_size, model.config.num_groups, height, width, -1)  # (B, G, h, w, D)
    if level == "patch":
        tokens = tokens.mean(dim=1)  # (B, h, w, D)
    return tokens.reshape(batch_size, -1)


def schema(
    length: int, with_key: bool = False, embeddings_dtype: str = "float32", reconstruction_error: bool = False
) -> pa.Schema:
    """The output's columns; parts also hold `chip_key` (see `clay_hf.data.chips.chip_key`), for `resume`."""
    fields = [
        ("source_url", pa.string()),
        ("date", pa.date32()),
        ("embeddings", pa.list_(EMBEDDINGS_DTYPES[embeddings_dtype], length)),
        ("geometry", pa.binary()),
        ("nodata_fraction", pa.float32()),
    ]
    if reconstruction_error:
        fields.append(("reconstruction_error", pa.float32()))
    return pa.schema([*fields, ("chip_key", pa.string())] if with_key else fields)


def embedding_layout(
    model: ClayModel,
    processor: ClayImageProcessor,
    bands: Sequence[str] | None = None,
    fill_value: float | str | None = None,
    image_size: int | Sequence[int] | None = None,
) -> ChipLayout:
    """What each chip must give the model: its bands picked by name (`bands` names the chips' bands in the
    chips' order; by default their band descriptions), `image_size` (a side or (height, width), multiples of
    the patch size; the model's by default), missing pixels filled with the processor's `fill_value` fill or the chip skipped."""
    model_bands = model.config.band_names
    fill = None if fill_value is None else processor.fill_values(fill_value, model_bands)
    return ChipLayout.for_model(model.config, image_size, chip_bands=bands, fill_values=fill)


def finite_rows(vectors: np.ndarray, batch: dict) -> np.ndarray:
    """(B,) True where a chip's embedding is finite; the others are named in a warning (never written)."""
    finite = np.isfinite(vectors).all(axis=1)
    for url in (url for url, ok in zip(batch["source_url"], finite, strict=True) if not ok):
        logger.warning("skipped %s: non-finite embedding", url)
    return finite


@dataclass
class EmbeddingOptions:
    """How [`embed_to_geoparquet`] embeds and writes: its keyword options."""

    level: str = "mean"  # mean (D,), patch (h, w, D) or group (G, h, w, D): see `embedding_shape`
    bands: Sequence[str] | None = None  # the chips' band names in the chips' order (default: their descriptions)
    batch_size: int = 8
    dtype: torch.dtype | None = None  # autocast precision (None: none)
    num_workers: int = 0  # DataLoader workers
    rows_per_part: int = 1024  # rows per durable part file
    resume: bool = False  # keep finished parts and skip their chips
    progress: bool = True  # a progress bar on the main rank
    fill_value: float | str | None = None  # fill missing pixels ("mean" or a raw value); default: skip such chips
    image_size: int | Sequence[int] | None = None  # a side or (height, width) (default: the model's)
    embeddings_dtype: str = "float32"  # stored values: float32 or float16
    rank_timeout: float = RANK_TIMEOUT_SECONDS  # give up on ranks silent this long (seconds)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}.")
        if self.embeddings_dtype not in EMBEDDINGS_DTYPES:
            raise ValueError(
                f"embeddings_dtype must be one of {list(EMBEDDINGS_DTYPES)}, got {self.embeddings_dtype!r}."
            )


def embed_to_geoparquet(
    model: ClayModel,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    output: str | PathLike,
    level: str = EmbeddingOptions.level,
    rank: Rank | None = None,
    reconstruction: ClayForMaskedImageModeling | None = None,
    **options: Any,
) -> EmbeddingRun:
    """Embed every chip of `source` and write GeoParquet to `output` (see the module docstring).

    `level` and `options` are the fields of [`EmbeddingOptions`] (`bands`, `batch_size`, `dtype`, `num_workers`,
    `rows_per_part`, `resume`, `progress`, `fill_value`, `image_size`, `embeddings_dtype`, `rank_timeout`).
    `model` is a ClayModel or anything with its call, `config` and `device` (e.g. `clay_hf.export.OnnxEncoder`).
    `bands` names the chips' bands in the chips' order (by default each chip's band descriptions, else v0 order for
    13 bands); the model's bands are picked from them by name. A chip that does not fit the model (see
    [`embedding_layout`]), cannot be read or holds missing pixels (unless `fill_value` is "mean" or a raw value) is
    skipped, named in a warning and counted in `bad_chips`; when every chip is bad, nothing is written (no output,
    no parts) and a `NoUsableChipsError` says so. `rank` is this process's place among several
    (`clay_hf.inference.ranks.current_rank()`); only the main rank writes `output`. With `reconstruction` (the
    pretraining model whose encoder is `model`), each chip's masked reconstruction error goes in
    `reconstruction_error`. The main rank gives up on ranks that show no sign of life for `rank_timeout` seconds,
    naming them.
    """
    rank = rank or Rank(0, 1, str(model.device))
    job = EmbeddingJob(model, processor, output, EmbeddingOptions(level=level, **options), rank, reconstruction)
    return job.run(source)


class EmbeddingJob:
    """One process's part of an embedding run into `output`: the model (and, for reconstruction errors, the
    pretraining model whose encoder it is), its processor, the options and this process's rank."""

    def __init__(
        self,
        model: ClayModel,
        processor: ClayImageProcessor,
        output: str | PathLike,
        options: EmbeddingOptions,
        rank: Rank,
        reconstruction: ClayForMaskedImageModeling | None = None,
    ) -> None:
        self.model, self.processor, self.options, self.rank = model, processor, options, rank
        self.reconstruction = reconstruction
        self.layout = embedding_layout(model, processor, options.bands, options.fill_value, options.image_size)
        self.model_name = model_reference(getattr(model, "name_or_path", None))
        self.model_revision = model_revision(self.model_name, getattr(model, "config", None))
        self.output = Path(output)
        self.parts_dir = self.output.with_name(self.output.name + ".parts")

    def run(self, source: str | PathLike | Sequence[str]) -> EmbeddingRun:
        """Embed this rank's share of the chips of `source` not done yet; the main rank joins every rank's parts
        into the output (see [`embed_to_geoparquet`])."""
        lock = OutputLock(self.output).acquire() if self.rank.is_main else None  # one run per output, first
        try:
            if self.rank.is_main:
                self._take_parts()
            self.rank.barrier("the start", self.options.rank_timeout)
            shape = self._check_resume()
            done, rows_before = _done_keys(self.parts_dir)
            sources = resolve_chip_source(source)  # GeoTIFF paths or Clay shard records
            remaining = without_chips(sources, done, key=resume_key)
            self.rank.barrier("the resume check", self.options.rank_timeout)  # all have read the finished parts
            report, shape = self._embed_share(_share(remaining, self.rank), shape)
            write_report(self.parts_dir, report)
            skipped_done = len(sources) - len(remaining)
            if not self.rank.is_main:
                return EmbeddingRun(self.output, report.processed, skipped_done, report.bad, shape or ())
            return self._join(source, rows_before, skipped_done, shape)
        finally:
            if lock is not None:
                lock.release()

    def _take_parts(self) -> None:
        """The main rank's parts folder: fresh (or resumed, its parts verified), without reports of an earlier run."""
        if not self.options.resume:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        make_folder(self.parts_dir)
        clear_reports(self.parts_dir)
        _verify_parts(self.parts_dir)

    def _check_resume(self) -> tuple[int, ...] | None:
        """The shape of the embeddings in finished parts (None when there are none), once their level, columns and
        model are this run's; else a [`ResumeError`] that says how to resume."""
        recorded = _recorded_layout(self.parts_dir)
        if recorded is not None and recorded[0] != self.options.level:
            raise ResumeError(
                f"{self.parts_dir} holds embeddings at level {recorded[0]!r}: resume with --level {recorded[0]}, "
                "or start again without --resume"
            )
        _check_recorded_columns(self.parts_dir, self.reconstruction is not None)
        _check_recorded_model(self.parts_dir, self.model_name, self.model_revision)
        return recorded[1] if recorded else None

    def _embed_share(
        self, paths: list[str] | ShardSelection, shape: tuple[int, ...] | None
    ) -> tuple[RankReport, tuple[int, ...] | None]:
        """Embed `paths` (this rank's share) into this rank's parts: its report, and the embeddings' shape."""
        started = time.time()
        options = self.options
        folder = _rank_folder(self.parts_dir, self.rank)
        writer = _PartWriter(
            folder, options.rows_per_part, options.level, options.embeddings_dtype, self.reconstruction is not None,
            self.model_name, self.model_revision,
        )  # fmt: skip
        embedded, bad_chips = 0, 0
        for batch in self._batches(paths):
            inputs = model_inputs(batch, self.processor, self.model.device, self.model.config.band_names)
            batch, inputs = drop_nonfinite_chips(batch, inputs)
            bad_chips += batch["bad_chips"]
            if not batch["source_url"]:
                continue
            vectors, errors = self._embed(batch, inputs)
            finite = finite_rows(vectors, batch)
            bad_chips += int((~finite).sum())
            shape = self._checked_shape(tuple(inputs["pixel_values"].shape[-2:]), shape)
            writer.add(batch, vectors, shape, finite, errors)
            embedded += int(finite.sum())
        writer.close()
        return RankReport(self.rank.index, embedded, bad_chips, started, time.time()), shape

    def _batches(self, paths: list[str] | ShardSelection) -> Iterator[dict]:
        """Batches of the chips of `paths`, with a progress bar on the main rank."""
        if not paths:
            return
        options = self.options
        dataset = load_chip_dataset(paths, num_workers=options.num_workers, layout=self.layout)
        loader = chip_dataloader(dataset, options.batch_size, options.num_workers)
        yield from _progress(loader, len(paths), options.progress and self.rank.is_main)

    def _embed(self, batch: dict, inputs: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, …) embeddings of a batch and, with a pretraining model, (B,) masked reconstruction errors."""
        dtype, device = self.options.dtype, self.model.device
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            vectors = embed_batch(self.model, inputs, self.options.level).cpu().numpy()
            if self.reconstruction is None:
                return vectors, None
            urls = batch["source_url"]
            errors = chip_reconstruction_errors(self.reconstruction, inputs, urls, VALIDATION_MASKING_SEED)
            return vectors, errors.cpu().numpy()

    def _checked_shape(self, size: tuple[int, int], shape: tuple[int, ...] | None) -> tuple[int, ...]:
        """The embeddings' shape for chips of `size` (height, width): the same as the parts' so far, or a user error."""
        batch_shape = embedding_shape(self.model, self.options.level, size)
        if shape is not None and batch_shape != shape:
            raise ClayUserError(
                f"chips of {size} pixels give embeddings of shape {batch_shape}, but {self.output} already holds "
                f"shape {shape}: one output holds one chip size"
            )
        return batch_shape

    def _join(
        self, source: str | PathLike | Sequence[str], rows_before: int, skipped_done: int, shape: tuple[int, ...] | None
    ) -> EmbeddingRun:
        """The main rank's end: every rank's parts joined into the output (nothing written when every chip was bad)."""
        reports, rows = self._gather(rows_before)
        embedded, bad_chips = sum(r.processed for r in reports), sum(r.bad for r in reports)
        if rows == 0 and bad_chips:
            shutil.rmtree(self.parts_dir)
            raise NoUsableChipsError(
                f"no chip of {_source_name(source)} could be embedded: all {bad_chips} were bad (the warnings above "
                f"name each and say why); nothing was written to {self.output}"
            )
        recorded = _recorded_layout(self.parts_dir)  # every rank's parts, now that all are done
        shape = recorded[1] if recorded else shape or embedding_shape(self.model, self.options.level, self.layout.size)
        _join_parts(self.parts_dir, self.output, self._written_layout(shape), rows)
        shutil.rmtree(self.parts_dir)
        rate = throughput(reports)
        logger.info(
            "embedded %d chips (%d already done, %d bad chips skipped) → %s; %s",
            embedded, skipped_done, bad_chips, self.output, rate,
        )  # fmt: skip
        return EmbeddingRun(self.output, embedded, skipped_done, bad_chips, shape, rate)

    def _gather(self, rows_before: int) -> tuple[list[RankReport], int]:
        """Every rank's report once all have finished, and the rows of the parts (checked whole and complete)."""
        reports = wait_for_reports(
            self.parts_dir,
            self.rank.world_size,
            timeout_seconds=self.options.rank_timeout,
            last_activity=lambda rank: _last_activity(self.parts_dir, rank),
        )
        _verify_parts(self.parts_dir)
        rows = _count_rows(self.parts_dir)
        expected_rows = rows_before + sum(report.processed for report in reports)
        if rows != expected_rows:
            raise IntegrityError(
                f"{self.parts_dir} holds {rows} rows where this run expected {expected_rows} (parts were removed or "
                "added by another process while it ran): nothing was joined; rerun with --resume"
            )
        return reports, rows

    def _written_layout(self, shape: tuple[int, ...]) -> dict:
        """What the output's `clay:embeddings` metadata records: level, shape, dtype, masking, model and its weights'
        checksum (`model_revision`)."""
        written = {"level": self.options.level, "shape": list(shape), "dtype": self.options.embeddings_dtype}
        if self.reconstruction is not None:
            written["reconstruction_error"] = {
                "masking": masking_description("random", VALIDATION_MASKING_SEED),
                "mask_ratio": self.reconstruction.config.mask_ratio,
            }
        return {**written, "model_name_or_path": self.model_name, "model_revision": self.model_revision}


def _source_name(source: str | PathLike | Sequence[str]) -> str:
    """How an error names the chips given: the folder, glob, list file or URL, or the number of chips listed."""
    return str(source) if isinstance(source, (str, PathLike)) else f"the {len(source)} chips listed"


def _share(chips, rank: Rank):
    """This rank's contiguous share of the chips (paths, or the records of a ShardSelection)."""
    if isinstance(chips, list):
        return shard(chips, rank.index, rank.world_size)
    mine = set(shard(list(chips), rank.index, rank.world_size))
    return chips.where(lambda name: name in mine)


def _rank_folder(parts_dir: Path, rank: Rank) -> Path:
    """Where a rank writes its parts: the parts folder itself for a single process, else `rank-NNNNN/` in it."""
    return parts_dir if rank.world_size == 1 else parts_dir / f"rank-{rank.index:05d}"


def _parts(parts_dir: Path) -> list[Path]:
    """Finished parts of every rank: the folder's own (a single process's), then each rank's, each by number."""
    folders = [parts_dir, *sorted(parts_dir.glob("rank-*/"))]
    return [part for folder in folders for part in sorted(folder.glob("part-*.parquet"), key=_part_number)]


def _progress(loader, total: int, enabled: bool) -> Iterator[dict]:
    from transformers.utils.logging import tqdm  # transformers' switch: disable_progress_bar() turns it off

    with tqdm(total=total, unit="chip", disable=not enabled, desc="embedding", mininterval=1.0) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch["source_url"]) + batch["bad_chips"])


class _PartWriter:
    """Buffers rows and writes them as complete part files (temporary name, then renamed), numbered after the
    highest existing part so that a finished part is never overwritten."""

    def __init__(
        self,
        folder: Path,
        rows_per_part: int,
        level: str,
        embeddings_dtype: str = "float32",
        reconstruction_error: bool = False,
        model_name: str | None = None,
        model_revision: str | None = None,
    ) -> None:
        self.folder, self.rows_per_part, self.level = folder, rows_per_part, level
        self.embeddings_dtype, self.reconstruction_error = embeddings_dtype, reconstruction_error
        self.model_name, self.model_revision = model_name, model_revision
        make_folder(folder)
        self.rows: list[dict] = []
        self.shape: tuple[int, ...] | None = None
        self.index = max((_part_number(part) for part in folder.glob("part-*.parquet")), default=-1) + 1

    def add(
        self,
        batch: dict,
        vectors: np.ndarray,
        shape: tuple[int, ...],
        keep: np.ndarray,
        errors: np.ndarray | None = None,
    ) -> None:
        """Rows of the chips of `batch` where `keep` is True (with their reconstruction `errors`, when given; a
        non-finite one is left null)."""
        self.shape = shape
        height, width = batch["pixels"].shape[-2:]
        for i, url in enumerate(batch["source_url"]):
            if not keep[i]:
                continue
            self.rows.append(
                {
                    "source_url": url,
                    "date": batch["date"][i],
                    "embeddings": vectors[i],
                    "geometry": _footprint_wkb(batch, i, (height, width)),
                    "nodata_fraction": float(batch["nodata_fraction"][i]),
                    "reconstruction_error": None if errors is None or not np.isfinite(errors[i]) else float(errors[i]),
                    "chip_key": resume_key(url),
                }
            )
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        length = len(self.rows[0]["embeddings"])
        recorded = {"level": self.level, "shape": list(self.shape), "model_name_or_path": self.model_name,
                    "model_revision": self.model_revision}  # fmt: skip
        metadata = {SHAPE_KEY: json.dumps(recorded).encode()}
        table = pa.table(
            {
                "source_url": [row["source_url"] for row in self.rows],
                "date": [row["date"] for row in self.rows],
                "embeddings": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.concatenate([row["embeddings"] for row in self.rows]).astype(np.float32)), length
                ).cast(pa.list_(EMBEDDINGS_DTYPES[self.embeddings_dtype], length)),
                "geometry": [row["geometry"] for row in self.rows],
                "nodata_fraction": pa.array([row["nodata_fraction"] for row in self.rows], pa.float32()),
                "reconstruction_error": pa.array([row["reconstruction_error"] for row in self.rows], pa.float32()),
                "chip_key": [row["chip_key"] for row in self.rows],
            },
            schema=schema(length, True, self.embeddings_dtype, self.reconstruction_error).with_metadata(metadata),
        )
        final = self.folder / f"part-{self.index:05d}.parquet"
        with atomic_file(final) as temporary:
            pq.write_table(table, temporary, write_page_checksum=True)
        add_checksums(self.folder, [final.name])  # a kill just before: the part is complete, verified on resume
        self.index += 1
        self.rows = []

    def close(self) -> None:
        self.flush()


def _footprint_wkb(batch: dict, index: int, size: tuple[int, int]) -> bytes | None:
    """The chip's footprint as WKB; None (a null geometry, with a warning naming the chip) if it has no place."""
    crs = batch["crs"][index] if batch.get("crs") else ""
    epsg = int(batch["epsg"][index])
    transform = batch["transform"][index].tolist() if "transform" in batch else None
    try:
        if not crs and epsg < 0:
            raise ValueError("it has no CRS")
        return to_wkb(chip_footprint(batch["bbox"][index].tolist(), crs or epsg, transform, size))
    except Exception as error:  # PROJ and geometry errors: the embedding is kept, the footprint is not
        logger.warning("%s: no footprint (%s); its geometry is left null", batch["source_url"][index], error)
        return None


def _part_number(part: Path) -> int:
    return int(part.stem.split("-", 1)[1])


def resume_key(source: str | PathLike) -> str:
    """What `resume` matches a chip by: its real path (however the folder is spelled, through symlinks too), or a
    URL without its query string (see `clay_hf.data.chips.chip_key`)."""
    key = chip_key(source)
    return os.path.realpath(key) if os.path.isabs(key) else key


def _read_part(part: Path, columns: list[str] | None = None) -> pa.Table:
    """A part's columns, its Parquet page checksums verified; a damaged part is an [`IntegrityError`] naming it."""
    try:
        return pq.read_table(part, columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _damaged(part, error) from error


def _damaged(part: Path, cause: object) -> IntegrityError:
    return IntegrityError(
        f"{part} is damaged ({cause}): remove it and rerun with --resume (its chips are embedded again)"
    )


def _verify_parts(parts_dir: Path) -> None:
    """Check every part against its folder's `checksums.sha256`; a part written just before a kill, whose checksum
    was not recorded yet, is read whole (page checksums) and recorded. Unfinished parts of a killed run go."""
    for folder in [parts_dir, *sorted(parts_dir.glob("rank-*/"))]:
        remove_partials(folder)
        recorded = read_checksums(folder)
        unlisted = []
        for part in sorted(folder.glob("part-*.parquet"), key=_part_number):
            if part.name in recorded:
                try:
                    verify_file(folder, part.name, recorded[part.name])
                except IntegrityError as error:
                    raise _damaged(part, "its SHA-256 does not match its checksums.sha256") from error
            else:
                _read_part(part)
                unlisted.append(part.name)
        if unlisted:
            add_checksums(folder, unlisted)


def _count_rows(parts_dir: Path) -> int:
    try:
        return sum(pq.read_metadata(part).num_rows for part in _parts(parts_dir))
    except (pa.ArrowException, OSError) as error:
        raise IntegrityError(f"a part in {parts_dir} cannot be read ({error}): rerun with --resume") from error


def _last_activity(parts_dir: Path, rank: int) -> float:
    """When a rank last showed a sign of life: its newest part (0 when it has none yet)."""
    times = [path.stat().st_mtime for path in (parts_dir / f"rank-{rank:05d}").glob("*") if path.is_file()]
    return max(times, default=0.0)


def _done_keys(parts_dir: Path) -> tuple[set[str], int]:
    """The chip keys in finished parts, and their rows."""
    keys = [key for part in _parts(parts_dir) for key in _read_part(part, ["chip_key"]).column("chip_key").to_pylist()]
    return {resume_key(key) for key in keys}, len(keys)


def _recorded(part: Path) -> dict:
    """What a part records in its `clay:embeddings` metadata: level, shape, model and `model_revision`."""
    metadata = pq.read_schema(part).metadata or {}
    if SHAPE_KEY not in metadata:
        raise _damaged(part, f"its schema has no {SHAPE_KEY.decode()} metadata")
    return json.loads(metadata[SHAPE_KEY])


def _recorded_layout(parts_dir: Path) -> tuple[str, tuple[int, ...]] | None:
    """(level, shape) recorded in the finished parts, or None if there are none."""
    parts = _parts(parts_dir)
    if not parts:
        return None
    recorded = _recorded(parts[0])
    return recorded["level"], tuple(recorded["shape"])


def _check_recorded_model(parts_dir: Path, model_name: str | None, revision: str | None) -> None:
    """Refuse to resume parts another model embedded, or the same model before its weights changed (parts of a model
    without a name or a known revision pass that check)."""
    for part in _parts(parts_dir):
        recorded = _recorded(part)
        name, recorded_revision = recorded["model_name_or_path"], recorded.get("model_revision")
        if name is not None and name != model_name:
            raise ResumeError(
                f"{parts_dir} holds embeddings of the model {name}; this run embeds with {model_name}: resume "
                f"with --model_name_or_path {name}, or start again without --resume"
            )
        if None not in (recorded_revision, revision) and recorded_revision != revision:
            raise ResumeError(
                f"{parts_dir} holds embeddings of the model {name} as it was then ({recorded_revision}); its weights "
                f"have changed since ({revision}): start again without --resume"
            )


def _check_recorded_columns(parts_dir: Path, reconstruction_error: bool) -> None:
    """Refuse to resume parts written with(out) reconstruction errors in a run without (with) them."""
    parts = _parts(parts_dir)
    if parts and ("reconstruction_error" in pq.read_schema(parts[0]).names) != reconstruction_error:
        recorded = "with" if reconstruction_error is False else "without"
        raise ResumeError(
            f"{parts_dir} holds embeddings written {recorded} reconstruction errors: resume the same way "
            "(--reconstruction_error or not), or start again without --resume"
        )


def _join_parts(parts_dir: Path, output: Path, layout: dict, rows: int) -> None:
    """Join the parts into one GeoParquet file with `geo` and `clay:embeddings` metadata (`layout`: level, shape,
    dtype and the model), atomically: it appears only once it reads back with all `rows`."""
    parts = _parts(parts_dir)
    length = int(np.prod(layout["shape"]))
    geometries = _footprints(parts)
    metadata = {
        b"geo": json.dumps(
            geo_metadata(lonlat_bbox(geometries), {g.geom_type for g in geometries} or {"Polygon"})
        ).encode(),
        SHAPE_KEY: json.dumps(layout).encode(),
    }
    target = schema(length, False, layout["dtype"], "reconstruction_error" in layout).with_metadata(metadata)
    with (
        atomic_file(output, verify=lambda path: _check_rows(path, rows)) as temporary,
        pq.ParquetWriter(temporary, target, write_page_checksum=True) as writer,
    ):
        for part in parts:
            writer.write_table(_read_part(part).select(target.names).cast(target))


def _check_rows(path: Path, rows: int) -> None:
    written = pq.read_metadata(path).num_rows
    if written != rows:
        raise ValueError(f"{written} rows where the parts hold {rows}")


def _footprints(parts: list[Path]) -> list[Polygon | MultiPolygon]:
    wkb = [value for part in parts for value in _read_part(part, ["geometry"]).column("geometry").to_pylist()]
    return [geometry for geometry in from_wkb([value for value in wkb if value is not None])]


__all__ = [
    "EmbeddingJob",
    "EmbeddingOptions",
    "EmbeddingRun",
    "embed_batch",
    "embed_to_geoparquet",
    "embedding_layout",
    "embedding_shape",
    "load_encoder",
]
