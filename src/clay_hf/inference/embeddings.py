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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from shapely import MultiPolygon, Polygon, from_wkb, to_wkb
from transformers.utils.logging import get_logger

from ..data.chips import ChipLayout, chip_key
from ..data.dataset import chip_dataloader, drop_nonfinite_chips, model_inputs
from ..data.sources import load_chip_dataset, resolve_chip_source, without_chips
from ..evaluation.reconstruction import VALIDATION_MASKING_SEED, chip_reconstruction_errors, masking_description
from ..models.clay.image_processing_clay import ClayImageProcessor, load_image_processor
from ..models.clay.modeling_clay import ClayForMaskedImageModeling, ClayModel
from ..utils.errors import ClayUserError, IntegrityError, ResumeError
from ..utils.geometry import lonlat_bbox
from ..utils.model_source import from_pretrained_checked, model_reference
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


def embed_to_geoparquet(
    model: ClayModel,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    output: str | PathLike,
    level: str = "mean",
    bands: Sequence[str] | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    rows_per_part: int = 1024,
    resume: bool = False,
    progress: bool = True,
    fill_value: float | str | None = None,
    image_size: int | Sequence[int] | None = None,
    embeddings_dtype: str = "float32",
    rank: Rank | None = None,
    reconstruction: ClayForMaskedImageModeling | None = None,
    rank_timeout: float = RANK_TIMEOUT_SECONDS,
) -> EmbeddingRun:
    """Embed every chip of `source` and write GeoParquet to `output` (see the module docstring).

    `model` is a ClayModel or anything with its call, `config` and `device` (e.g. `clay_hf.export.OnnxEncoder`).
    `bands` names the chips' bands in the chips' order (by default each chip's band descriptions, else v0 order for
    13 bands); the model's bands are picked from them by name. A chip that does not fit the model (see
    [`embedding_layout`]), cannot be read or holds missing pixels (unless `fill_value` is "mean" or a raw value) is
    skipped, named in a warning and counted in `bad_chips`. `rank` is this process's place among several
    (`clay_hf.inference.ranks.current_rank()`); only the main rank writes `output`. With `reconstruction` (the pretraining
    model whose encoder is `model`), each chip's masked reconstruction error goes in `reconstruction_error`. The main
    rank gives up on ranks that show no sign of life for `rank_timeout` seconds, naming them.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")
    if embeddings_dtype not in EMBEDDINGS_DTYPES:
        raise ValueError(f"embeddings_dtype must be one of {list(EMBEDDINGS_DTYPES)}, got {embeddings_dtype!r}.")
    layout = embedding_layout(model, processor, bands, fill_value, image_size)
    rank = rank or Rank(0, 1, str(model.device))
    output = Path(output)
    parts_dir = output.with_name(output.name + ".parts")
    model_name = model_reference(getattr(model, "name_or_path", None))
    lock = OutputLock(output).acquire() if rank.is_main else None  # one run per output, before touching its parts
    try:
        if rank.is_main:
            if not resume:
                shutil.rmtree(parts_dir, ignore_errors=True)
            make_folder(parts_dir)
            clear_reports(parts_dir)
            _verify_parts(parts_dir)
        rank.barrier()
        return _embed_and_join(
            model, processor, source, output, parts_dir, level, layout, rank, batch_size, dtype, num_workers,
            rows_per_part, progress, embeddings_dtype, reconstruction, model_name, rank_timeout,
        )  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _embed_and_join(
    model, processor, source, output: Path, parts_dir: Path, level: str, layout: ChipLayout, rank: Rank,
    batch_size: int, dtype, num_workers: int, rows_per_part: int, progress: bool, embeddings_dtype: str,
    reconstruction, model_name: str | None, rank_timeout: float,
) -> EmbeddingRun:  # fmt: skip
    """The body of [`embed_to_geoparquet`], once the output is this run's and its parts are verified."""
    recorded = _recorded_layout(parts_dir)
    if recorded is not None and recorded[0] != level:
        raise ResumeError(
            f"{parts_dir} holds embeddings at level {recorded[0]!r}: resume with --level {recorded[0]}, or start "
            "again without --resume"
        )
    _check_recorded_columns(parts_dir, reconstruction is not None)
    _check_recorded_model(parts_dir, model_name)
    done, rows_before = _done_keys(parts_dir)

    sources = resolve_chip_source(source)  # GeoTIFF paths or Clay shard records
    remaining = without_chips(sources, done, key=resume_key)
    rank.barrier()  # every rank has read the finished parts before any writes new ones

    paths = _share(remaining, rank)
    started = time.time()
    device = model.device
    writer = _PartWriter(
        _rank_folder(parts_dir, rank), rows_per_part, level, embeddings_dtype, reconstruction is not None, model_name
    )
    bad_chips, embedded, shape = 0, 0, recorded[1] if recorded else None
    if paths:
        dataset = load_chip_dataset(paths, num_workers=num_workers, layout=layout)
        loader = chip_dataloader(dataset, batch_size, num_workers)
        for batch in _progress(loader, len(paths), batch_size, progress and rank.is_main):
            inputs = model_inputs(batch, processor, device, model.config.band_names)
            batch, inputs = drop_nonfinite_chips(batch, inputs)
            bad_chips += batch["bad_chips"]
            if not batch["source_url"]:
                continue
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                vectors = embed_batch(model, inputs, level).cpu().numpy()
                errors = None
                if reconstruction is not None:  # (B,)
                    urls = batch["source_url"]
                    errors = chip_reconstruction_errors(reconstruction, inputs, urls, VALIDATION_MASKING_SEED)
                    errors = errors.cpu().numpy()
            finite = finite_rows(vectors, batch)
            bad_chips += int((~finite).sum())
            batch_shape = embedding_shape(model, level, tuple(inputs["pixel_values"].shape[-2:]))
            if shape is not None and batch_shape != shape:
                raise ClayUserError(
                    f"chips of {tuple(inputs['pixel_values'].shape[-2:])} pixels give embeddings of shape "
                    f"{batch_shape}, but {output} already holds shape {shape}: one output holds one chip size"
                )
            shape = batch_shape
            writer.add(batch, vectors, shape, finite, errors)
            embedded += int(finite.sum())
    writer.close()
    write_report(parts_dir, RankReport(rank.index, embedded, bad_chips, started, time.time()))
    skipped_done = len(sources) - len(remaining)
    if not rank.is_main:
        return EmbeddingRun(output, embedded, skipped_done, bad_chips, shape or ())
    reports = wait_for_reports(
        parts_dir, rank.world_size, timeout_seconds=rank_timeout, last_activity=lambda r: _last_activity(parts_dir, r)
    )
    _verify_parts(parts_dir)
    rows = _count_rows(parts_dir)
    expected_rows = rows_before + sum(report.processed for report in reports)
    if rows != expected_rows:
        raise IntegrityError(
            f"{parts_dir} holds {rows} rows where this run expected {expected_rows} (parts were removed or added "
            "by another process while it ran): nothing was joined; rerun with --resume"
        )
    recorded = _recorded_layout(parts_dir)  # every rank's parts, now that all are done
    shape = recorded[1] if recorded else shape or embedding_shape(model, level, layout.size)
    written = {"level": level, "shape": list(shape), "dtype": embeddings_dtype}
    if reconstruction is not None:
        written["reconstruction_error"] = {
            "masking": masking_description("random", VALIDATION_MASKING_SEED),
            "mask_ratio": reconstruction.config.mask_ratio,
        }
    _join_parts(parts_dir, output, {**written, "model_name_or_path": model_name}, rows)
    shutil.rmtree(parts_dir)
    embedded, bad_chips = sum(r.processed for r in reports), sum(r.bad for r in reports)
    rate = throughput(reports)
    logger.info(
        "embedded %d chips (%d already done, %d bad chips skipped) → %s; %s",
        embedded, skipped_done, bad_chips, output, rate,
    )  # fmt: skip
    return EmbeddingRun(output, embedded, skipped_done, bad_chips, shape, rate)


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


def _progress(loader, total: int, batch_size: int, enabled: bool) -> Iterator[dict]:
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
    ) -> None:
        self.folder, self.rows_per_part, self.level = folder, rows_per_part, level
        self.embeddings_dtype, self.reconstruction_error = embeddings_dtype, reconstruction_error
        self.model_name = model_name
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
        recorded = {"level": self.level, "shape": list(self.shape), "model_name_or_path": self.model_name}
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
    """The chip keys in finished parts (parts of older runs without keys: their `source_url`), and their rows."""
    done: set[str] = set()
    rows = 0
    for part in _parts(parts_dir):
        names = pq.read_schema(part).names
        column = "chip_key" if "chip_key" in names else "source_url"
        keys = _read_part(part, [column]).column(column).to_pylist()
        done.update(resume_key(key) for key in keys)
        rows += len(keys)
    return done, rows


def _recorded_layout(parts_dir: Path) -> tuple[str, tuple[int, ...]] | None:
    """(level, shape) recorded in the finished parts, or None if there are none."""
    for part in _parts(parts_dir):
        metadata = pq.read_schema(part).metadata or {}
        if SHAPE_KEY in metadata:
            recorded = json.loads(metadata[SHAPE_KEY])
            return recorded["level"], tuple(recorded["shape"])
    return None


def _check_recorded_model(parts_dir: Path, model_name: str | None) -> None:
    """Refuse to resume parts another model embedded (parts of runs before the model was recorded pass)."""
    for part in _parts(parts_dir):
        recorded = json.loads((pq.read_schema(part).metadata or {}).get(SHAPE_KEY, b"{}")).get("model_name_or_path")
        if recorded is not None and recorded != model_name:
            raise ResumeError(
                f"{parts_dir} holds embeddings of the model {recorded}; this run embeds with {model_name}: resume "
                f"with --model_name_or_path {recorded}, or start again without --resume"
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
            writer.write_table(_with_nodata_fraction(_read_part(part)).select(target.names).cast(target))


def _check_rows(path: Path, rows: int) -> None:
    written = pq.read_metadata(path).num_rows
    if written != rows:
        raise ValueError(f"{written} rows where the parts hold {rows}")


def _with_nodata_fraction(table: pa.Table) -> pa.Table:
    """A part as written today: parts of runs before the `nodata_fraction` column held only clean chips (0)."""
    if "nodata_fraction" in table.column_names:
        return table
    return table.append_column("nodata_fraction", pa.array(np.zeros(len(table), np.float32)))


def _footprints(parts: list[Path]) -> list[Polygon | MultiPolygon]:
    wkb = [value for part in parts for value in _read_part(part, ["geometry"]).column("geometry").to_pylist()]
    return [geometry for geometry in from_wkb([value for value in wkb if value is not None])]


__all__ = ["EmbeddingRun", "embed_batch", "embed_to_geoparquet", "embedding_layout", "embedding_shape", "load_encoder"]
