"""Embeddings GeoParquet → a LanceDB table (one row per chip, or per patch), with an ANN index once it is large.

The table records, in its `vector` column's metadata (`clay:search`), the embeddings file it came from, the model
that made them (a path, Hub id or .onnx file, for embedding new query chips), the level, the metric and the ANN
index with its query settings.

A build is written under the fault contract of `clay_hf.utils.outputs`: the whole LanceDB folder is built aside
(`.INDEX_DIR.partial`) and swapped into place once complete ([`atomic_folder`]), so a kill or a full disk leaves the
previous index whole and queryable; one build per folder at a time (`INDEX_DIR.lock`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer
from transformers.utils.logging import get_logger

from ..utils.errors import ClayUserError
from ..utils.model_source import model_reference
from ..utils.outputs import OutputLock, atomic_folder, foreign_contents
from .patches import patch_footprints

logger = get_logger(__name__)

TABLE_NAME = "embeddings"
METADATA_KEY = b"clay:search"
METRICS = ("cosine", "l2")
INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
#: Tables with at least this many rows get an ANN index; smaller ones are searched exactly (brute force: ~0.4 s a
#: query at 200 k × 768 on a loaded 2-core CPU, benchmarks/bench_search.py).
ANN_THRESHOLD = 100_000
#: Query settings for the IVF-PQ index: recall@10 0.964 at 1 M × 768 in benchmarks/bench_search.py, 12 ms a query
#: (refine 10: 0.736; at 200 k, refine 10 gave 0.994 and refine 30 1.0).
DEFAULT_NPROBES = 32
DEFAULT_REFINE_FACTOR = 30
BBOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
CRS84 = CRS.from_user_input("OGC:CRS84")


class SearchIndexError(ClayUserError, ValueError):
    """A file or index that cannot be used; the message names it and the problem."""


@dataclass
class AnnIndex:
    """An approximate nearest-neighbour index and the query settings that go with it. The IVF partitions are trained
    by k-means on `sample_rate` vectors a partition for at most `max_iterations` (LanceDB's defaults); fewer make a
    large index faster to build."""

    index_type: str
    num_partitions: int
    num_sub_vectors: int | None
    nprobes: int
    refine_factor: int | None
    max_iterations: int = 50
    sample_rate: int = 256


@dataclass
class IndexInfo:
    """What a search table holds: the `clay:search` metadata."""

    embeddings: str
    model_name_or_path: str | None
    level: str
    dim: int
    metric: str
    rows: int
    skipped: int = 0
    ann: AnnIndex | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> IndexInfo:
        fields = json.loads(data)
        ann = fields.pop("ann")
        return cls(**fields, ann=AnnIndex(**ann) if ann else None)


def read_embeddings_metadata(path: Path) -> tuple[dict, CRS]:
    """The `clay:embeddings` metadata (level, shape, model) and the geometry's CRS of an embeddings GeoParquet."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise SearchIndexError(f"{path}: cannot be read as Parquet ({error})") from None
    if b"clay:embeddings" not in metadata:
        raise SearchIndexError(f"{path}: has no 'clay:embeddings' metadata; is it a file written by embed.py?")
    embeddings = json.loads(metadata[b"clay:embeddings"])
    geo = json.loads(metadata.get(b"geo", b"{}"))
    column = geo.get("columns", {}).get("geometry", {})
    crs = CRS.from_user_input(column["crs"]) if column.get("crs") else CRS84  # GeoParquet's default is OGC:CRS84
    return embeddings, crs


def build_index(
    embeddings: str | PathLike,
    index_dir: str | PathLike,
    metric: str = "cosine",
    model_name_or_path: str | None = None,
    ann_threshold: int = ANN_THRESHOLD,
    index_type: str = "IVF_PQ",
    batch_rows: int = 4096,
    **ann_settings: int,
) -> IndexInfo:
    """Build (or replace) the search table of `embeddings` in `index_dir`; `patch` files become one row per patch.
    `ann_settings` override [`AnnIndex`]'s fields (e.g. `max_iterations=10` builds a large index faster).

    The folder is built aside and swapped into place whole once its table, metadata and ANN index are complete: a
    kill or a full disk (an OutputError naming `index_dir`) leaves the previous index as it was. A folder holding
    anything but a search table is refused; another build of the same folder is refused while it runs.
    """
    import lancedb

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}.")
    path = Path(embeddings)
    meta, crs = read_embeddings_metadata(path)
    level, shape = meta.get("level"), tuple(meta.get("shape", ()))
    if level not in ("mean", "patch"):
        raise SearchIndexError(f"{path}: level {level!r} cannot be searched; index a 'mean' or 'patch' file.")
    model_name_or_path = model_reference(model_name_or_path) or meta.get("model_name_or_path")
    parquet = pq.ParquetFile(path)
    info = IndexInfo(str(path), model_name_or_path, level, shape[-1], metric, rows=0)

    skipped = [0]
    batches = _table_batches(parquet, path, level, shape, crs, batch_rows, skipped)
    first = next(batches, None)
    if first is None:
        raise SearchIndexError(f"{path}: holds no embeddings with a finite vector to index.")
    index_dir = Path(index_dir)
    reader = pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))
    with OutputLock(index_dir):
        _check_index_dir(index_dir)
        with atomic_folder(index_dir.absolute()) as staging:
            table = lancedb.connect(str(staging)).create_table(TABLE_NAME, data=reader)
            info.rows, info.skipped = table.count_rows(), skipped[0]
            _record(table, info)
            if info.rows >= ann_threshold:
                create_ann_index(table, info, index_type, **ann_settings)
    logger.info("indexed %d rows of %s (%d skipped) in %s; ANN: %s", info.rows, path, info.skipped, index_dir, info.ann)
    return info


def _check_index_dir(index_dir: Path) -> None:
    """Refuse an `index_dir` that holds anything but a search table: a build replaces the folder whole."""
    others = foreign_contents(index_dir, own=(f"{TABLE_NAME}.lance",))
    if others:
        raise SearchIndexError(
            f"{index_dir}: holds {', '.join(others[:5])}, not only a search table: a build replaces the folder "
            "whole. Choose a new or empty folder."
        )


def create_ann_index(table, info: IndexInfo, index_type: str = "IVF_PQ", **settings) -> IndexInfo:
    """Build the ANN index of a search table (replacing any) and record it; `settings` override [`AnnIndex`]'s."""
    info.ann = replace(_ann_settings(info.rows, info.dim, index_type), **settings)
    table.create_index("vector", config=_index_config(info.ann, info.metric))
    _record(table, info)
    return info


def _ann_settings(rows: int, dim: int, index_type: str) -> AnnIndex:
    """IVF with about √rows partitions; PQ with sub-vectors of 8 dimensions (or fewer, where D is not divisible)."""
    num_partitions = max(1, int(math.sqrt(rows)))
    num_sub_vectors = next(n for n in (dim // 8, dim // 4, dim // 2, dim) if n and dim % n == 0)
    if index_type == "IVF_PQ":
        return AnnIndex(index_type, num_partitions, num_sub_vectors, DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR)
    return AnnIndex(index_type, num_partitions, None, DEFAULT_NPROBES, None)


def _index_config(ann: AnnIndex, metric: str):
    from lancedb.index import HnswSq, IvfPq

    training = {
        "num_partitions": ann.num_partitions,
        "max_iterations": ann.max_iterations,
        "sample_rate": ann.sample_rate,
    }
    if ann.index_type == "IVF_PQ":
        return IvfPq(distance_type=metric, num_sub_vectors=ann.num_sub_vectors, **training)
    return HnswSq(distance_type=metric, **training)


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _record(table, info: IndexInfo) -> None:
    """Store the `clay:search` metadata in the table, on its `vector` column."""
    table.update_field_metadata({"path": "vector", "metadata": {METADATA_KEY.decode(): info.to_json().decode()}})


def _table_batches(
    parquet: pq.ParquetFile, path: Path, level: str, shape: tuple, crs: CRS, batch_rows: int, skipped: list[int]
) -> Iterator[pa.RecordBatch]:
    """Record batches of the search table: the file's columns, `vector` (float32) and the footprint's bounds."""
    to_crs84 = None if crs.equals(CRS84) else Transformer.from_crs(crs, CRS84, always_xy=True)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        vectors = _vectors(batch, path, shape)  # (n, P, D)
        geometries = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
        if to_crs84 is not None:
            geometries = shapely.transform(
                geometries, lambda xy: np.column_stack(to_crs84.transform(xy[:, 0], xy[:, 1]))
            )
        finite = np.isfinite(vectors).all(axis=(1, 2))
        if not finite.all():
            bad = batch.column("source_url").filter(pa.array(~finite)).to_pylist()
            logger.warning("%s: skipping %d rows with non-finite embeddings: %s", path, len(bad), bad[:5])
            skipped[0] += len(bad)
        keep = np.flatnonzero(finite)
        if keep.size == 0:
            continue
        others = batch.drop_columns(["embeddings", "geometry"]).take(pa.array(keep))
        if level == "patch":
            yield _patch_rows(others, vectors[keep], geometries[keep], shape)
        else:
            yield _with_vectors(others, vectors[keep, 0], geometries[keep])


def _vectors(batch: pa.RecordBatch, path: Path, shape: tuple) -> np.ndarray:
    column = batch.column("embeddings")
    length = int(np.prod(shape))
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != length:
        raise SearchIndexError(f"{path}: 'embeddings' is {column.type}, expected {length} values per row ({shape})")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(batch.num_rows, -1, shape[-1])  # (n, P, D): P = 1 (mean) or h·w (patch)


def _with_vectors(columns: pa.RecordBatch, vectors: np.ndarray, geometries: np.ndarray) -> pa.RecordBatch:
    """`columns` + `vector` (n, D) + `geometry` (WKB) + its bounds."""
    bounds = shapely.bounds(geometries)  # (n, 4)
    arrays = dict(zip(columns.schema.names, columns.columns, strict=True))
    arrays["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    arrays["geometry"] = pa.array(shapely.to_wkb(geometries), pa.binary())
    arrays.update({name: pa.array(bounds[:, i]) for i, name in enumerate(BBOX_COLUMNS)})
    return pa.RecordBatch.from_pydict(arrays)


def _patch_rows(columns: pa.RecordBatch, vectors: np.ndarray, chips: np.ndarray, shape: tuple) -> pa.RecordBatch:
    """One row per patch: the chip's columns repeated, `patch_row`, `patch_col`, the patch's vector and footprint."""
    rows, cols = shape[0], shape[1]
    patches = rows * cols
    repeated = columns.take(pa.array(np.repeat(np.arange(columns.num_rows), patches)))
    footprints = np.concatenate([patch_footprints(chip, rows, cols) for chip in chips])
    batch = _with_vectors(repeated, vectors.reshape(-1, shape[-1]), footprints)
    grid_row, grid_col = np.divmod(np.tile(np.arange(patches), columns.num_rows), cols)
    batch = batch.append_column("patch_row", pa.array(grid_row.astype(np.int32)))
    return batch.append_column("patch_col", pa.array(grid_col.astype(np.int32)))


def open_index(index_dir: str | PathLike):
    """(LanceDB table, IndexInfo) of a folder written by [`build_index`]."""
    import lancedb

    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise SearchIndexError(f"{index_dir}: no such index folder; build one with `search.py index`.")
    db = lancedb.connect(str(index_dir))
    if TABLE_NAME not in db.list_tables().tables:
        raise SearchIndexError(f"{index_dir}: holds no '{TABLE_NAME}' table; build one with `search.py index`.")
    table = db.open_table(TABLE_NAME)
    metadata = table.schema.field("vector").metadata or {}
    if METADATA_KEY not in metadata:
        raise SearchIndexError(f"{index_dir}: table '{TABLE_NAME}' has no clay:search metadata.")
    return table, IndexInfo.from_json(metadata[METADATA_KEY])


__all__ = [
    "ANN_THRESHOLD",
    "METRICS",
    "AnnIndex",
    "IndexInfo",
    "SearchIndexError",
    "build_index",
    "create_ann_index",
    "open_index",
]
