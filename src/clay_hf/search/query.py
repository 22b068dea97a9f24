"""Nearest neighbours in a search table: query vectors from chips in the table, new chip files or a point."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from transformers.utils.logging import get_logger

from ..utils.outputs import atomic_file, make_folder
from .table import BBOX_COLUMNS, IndexInfo, SearchIndexError, open_index

logger = get_logger(__name__)

_DATE_LITERAL = r"'(\d{4}-\d{2}-\d{2})'"


@dataclass
class Query:
    """A query vector and where it came from (for the log)."""

    vector: np.ndarray  # (D,)
    sources: list[str]


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def date_literals(where: str, date_columns: Sequence[str]) -> str:
    """`date >= '2022-01-01'` → `date >= DATE '2022-01-01'` for the table's date columns (LanceDB does not cast a
    string literal to a date by itself); other text is left alone."""
    for column in date_columns:
        name = re.escape(column)
        where = re.sub(rf"(\b{name}\s*(?:>=|<=|<>|!=|=|<|>)\s*){_DATE_LITERAL}", r"\1DATE '\2'", where)
        where = re.sub(
            rf"(\b{name}\s+(?:NOT\s+)?BETWEEN\s+){_DATE_LITERAL}(\s+AND\s+){_DATE_LITERAL}",
            r"\1DATE '\2'\3DATE '\4'",
            where,
            flags=re.IGNORECASE,
        )
    return where


def bbox_shape(bbox: Sequence[float]) -> shapely.Polygon | shapely.MultiPolygon:
    """(minlon, minlat, maxlon, maxlat) as a shape; minlon > maxlon is a box across the antimeridian."""
    minlon, minlat, maxlon, maxlat = bbox
    if minlat > maxlat or not all(-180 <= lon <= 180 for lon in (minlon, maxlon)):
        raise SearchIndexError(f"--bbox must be minlon minlat maxlon maxlat in degrees, got {list(bbox)}.")
    if minlon <= maxlon:
        return shapely.box(minlon, minlat, maxlon, maxlat)
    return shapely.MultiPolygon([shapely.box(minlon, minlat, 180, maxlat), shapely.box(-180, minlat, maxlon, maxlat)])


def bbox_filter(bbox: Sequence[float]) -> str:
    """SQL: rows whose footprint's bounds meet the box (a coarse test; [`nearest`] then keeps those that meet it)."""
    xmin, ymin, xmax, ymax = BBOX_COLUMNS
    shape = bbox_shape(bbox)
    parts = shape.geoms if isinstance(shape, shapely.MultiPolygon) else [shape]
    tests = [
        f"({xmax} >= {west} AND {xmin} <= {east} AND {ymax} >= {south} AND {ymin} <= {north})"
        for west, south, east, north in (part.bounds for part in parts)
    ]
    return "(" + " OR ".join(tests) + ")"


def _rows_where(table, where: str, columns: Sequence[str]) -> pa.Table:
    return table.search().where(where).select(list(columns)).limit(None).to_arrow()


def _vectors(rows: pa.Table) -> np.ndarray:
    column = rows.column("vector").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(rows.num_rows, column.type.list_size)  # (n, D)


def vectors_of_source(table, source_url: str) -> np.ndarray:
    """(n, D) vectors of the rows of `source_url` (one chip, or its patches); (0, D) if it is not in the table."""
    return _vectors(_rows_where(table, f"source_url = {sql_string(source_url)}", ["vector"]))


def vectors_at_point(table, lon: float, lat: float) -> tuple[np.ndarray, list[str]]:
    """(n, D) vectors of the rows whose footprint covers (lon, lat), and their source URLs."""
    xmin, ymin, xmax, ymax = BBOX_COLUMNS
    where = f"{xmin} <= {lon} AND {xmax} >= {lon} AND {ymin} <= {lat} AND {ymax} >= {lat}"
    rows = _rows_where(table, where, ["source_url", "vector", "geometry"])
    covers = shapely.covers(shapely.from_wkb(rows.column("geometry").to_pylist()), shapely.Point(lon, lat))
    rows = rows.filter(pa.array(covers, pa.bool_()))
    return _vectors(rows), rows.column("source_url").to_pylist()


def embed_chip_files(paths: Sequence[str], info: IndexInfo, model_name_or_path: str | None = None) -> np.ndarray:
    """(n, D) vectors of new chip files, embedded with the table's model (a model folder, a Hub id or an exported
    .onnx file) at the table's level (a patch table: the mean over the chip's patches)."""
    import torch

    from ..data import collate_chips, read_chip
    from ..data.dataset import model_inputs
    from ..inference.embeddings import embed_batch, embedding_layout, load_encoder

    model_name_or_path = model_name_or_path or info.model_name_or_path
    if model_name_or_path is None:
        raise SearchIndexError(
            "the index records no model, so new chips cannot be embedded: pass --model_name_or_path "
            "(or build the index with it)."
        )
    if str(model_name_or_path).endswith(".onnx"):
        from ..export import OnnxEncoder

        model = OnnxEncoder(model_name_or_path)
        processor = model.processor
    else:
        model, processor = load_encoder(model_name_or_path)
    if model.config.hidden_size != info.dim:
        raise SearchIndexError(
            f"{model_name_or_path}: embeds {model.config.hidden_size} values, the index holds {info.dim}."
        )
    layout = embedding_layout(model, processor)  # the model's bands picked by name; nodata refused
    vectors = []
    for path in paths:
        batch = collate_chips([read_chip(path, layout=layout).to_example()])
        inputs = model_inputs(batch, processor, torch.device("cpu"), model.config.band_names)
        with torch.no_grad():
            embedding = embed_batch(model, inputs, info.level)
        vectors.append(embedding.reshape(-1, info.dim).mean(dim=0).numpy())  # (D,): a patch table → the mean
    return np.stack(vectors)


def query_vector(
    table,
    info: IndexInfo,
    like: Sequence[str] = (),
    point: Sequence[float] | None = None,
    model_name_or_path: str | None = None,
) -> Query:
    """The mean vector of the `like` items (chips in the table by source URL, else chip files to embed) and of the
    rows covering `point`."""
    vectors, sources, new_files = [], [], []
    for item in like:
        found = vectors_of_source(table, str(item))
        if len(found):
            vectors.append(found.mean(axis=0))
            sources.append(str(item))
        elif Path(item).is_file() or "://" in str(item) or str(item).startswith("/vsi"):
            new_files.append(str(item))
        else:
            raise SearchIndexError(f"--like {item}: neither a source_url in the index nor a chip file that exists.")
    if new_files:
        vectors.extend(embed_chip_files(new_files, info, model_name_or_path))
        sources.extend(new_files)
    if point is not None:
        found, urls = vectors_at_point(table, *point)
        if not len(found):
            raise SearchIndexError(f"--point {point[0]} {point[1]}: no chip in the index covers this place.")
        vectors.append(found.mean(axis=0))
        sources.extend(f"{url} (covers the point)" for url in urls)
    if not vectors:
        raise SearchIndexError("give --like (one or more) or --point to query by.")
    return Query(np.mean(vectors, axis=0).astype(np.float32), sources)


def nearest(
    table,
    info: IndexInfo,
    vector: np.ndarray,
    k: int = 10,
    where: str | None = None,
    bbox: Sequence[float] | None = None,
    nprobes: int | None = None,
    refine_factor: int | None = None,
) -> pa.Table:
    """The k nearest rows to `vector`, nearest first, with `distance` (cosine: 1 − cos; l2: Euclidean), filtered by
    `where` (SQL over the table's columns) and `bbox` (footprints that meet it)."""
    date_columns = [f.name for f in table.schema if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type)]
    filters = [f"({date_literals(where, date_columns)})"] if where else []
    if bbox is not None:
        filters.append(bbox_filter(bbox))
    limit = k
    while True:
        hits = _search(table, info, vector, limit, " AND ".join(filters) or None, nprobes, refine_factor)
        if bbox is None:
            break
        meets = shapely.intersects(shapely.from_wkb(hits.column("geometry").to_pylist()), bbox_shape(bbox))
        exact = hits.filter(pa.array(meets, pa.bool_()))  # the bounds test is coarse: keep footprints that meet it
        if exact.num_rows >= k or hits.num_rows < limit:
            hits = exact
            break
        limit *= 4
    hits = hits.slice(0, k)
    distance = np.asarray(hits.column("_distance"), dtype=np.float64)
    if info.metric == "l2":
        distance = np.sqrt(np.maximum(distance, 0.0))  # LanceDB's l2 is the squared distance
    keep = [name for name in hits.column_names if name not in ("vector", "_distance", *BBOX_COLUMNS)]
    return hits.select(keep).append_column("distance", pa.array(distance))


def _search(table, info, vector, limit, where, nprobes, refine_factor) -> pa.Table:
    query = table.search(vector, vector_column_name="vector").distance_type(info.metric).limit(limit)
    if where:
        query = query.where(where, prefilter=True)
    if info.ann is not None:
        query = query.nprobes(nprobes or info.ann.nprobes)
        refine = refine_factor if refine_factor is not None else info.ann.refine_factor
        if refine:
            query = query.refine_factor(refine)
    try:
        return query.to_arrow()
    except ValueError as error:
        raise SearchIndexError(f"the query failed (check --where: {where!r}): {error}") from None


def write_hits(hits: pa.Table, output: str | PathLike, info: IndexInfo, query: Query) -> Path:
    """Write hits as GeoParquet (geometry WKB in OGC:CRS84, `geo` metadata as embed.py writes), atomically: the
    file appears once it reads back whole; a full disk is an OutputError naming `output`."""
    from ..inference.geoparquet import geo_metadata
    from ..utils.geometry import lonlat_bbox

    output = Path(output)
    make_folder(output.parent)
    geometries = [g for g in shapely.from_wkb(hits.column("geometry").to_pylist()) if g is not None]
    types = {geometry.geom_type for geometry in geometries} or {"Polygon"}
    metadata = {
        b"geo": json.dumps(geo_metadata(lonlat_bbox(geometries), types)).encode(),
        b"clay:search": json.dumps(
            {"metric": info.metric, "level": info.level, "index": info.embeddings, "query": query.sources}
        ).encode(),
    }
    with atomic_file(output, verify=pq.read_table) as temporary:
        pq.write_table(hits.replace_schema_metadata(metadata), temporary)
    return output


def search(
    index_dir: str | PathLike,
    like: Sequence[str] = (),
    point: Sequence[float] | None = None,
    k: int = 10,
    where: str | None = None,
    bbox: Sequence[float] | None = None,
    output: str | PathLike | None = None,
    model_name_or_path: str | None = None,
    nprobes: int | None = None,
    refine_factor: int | None = None,
) -> pa.Table:
    """Query the index in `index_dir` (see [`query_vector`] and [`nearest`]); write GeoParquet to `output`."""
    if k < 1:
        raise SearchIndexError(f"k must be at least 1, got {k}.")
    table, info = open_index(index_dir)
    query = query_vector(table, info, like, point, model_name_or_path)
    hits = nearest(table, info, query.vector, k, where, bbox, nprobes, refine_factor)
    if output is not None:
        write_hits(hits, output, info, query)
    return hits


__all__ = ["Query", "date_literals", "nearest", "query_vector", "search", "write_hits"]
