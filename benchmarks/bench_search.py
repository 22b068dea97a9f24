"""Similarity search at scale: index build time, query latency and recall@10 of the ANN index, in one run.

    python benchmarks/bench_search.py --num_vectors 1000000 --dim 768 --workdir /tmp/benchsearch \
        --output benchmarks/results/bench_search.json

Synthetic vectors (a mixture of Gaussian clusters, as embeddings of places are clustered; pure noise would be the
worst case of any ANN index) are generated chunk by chunk and written to an embeddings GeoParquet, while the exact
top k of the queries (fresh vectors from the same mixture) is kept up to date by numpy matrix products on each chunk:
no step holds more than one chunk of vectors. Then, timed: the LanceDB table through `clay_hf.search.build_index`,
exact search (no index) through `clay_hf.search.nearest` on a few queries, the IVF-PQ index through
`clay_hf.search.table.create_ann_index`, and queries through `nearest` at several nprobes/refine_factor, reporting
latency and recall@k against the numpy truth, and the sizes on disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import torch

from clay_hf.inference.geoparquet import geo_metadata
from clay_hf.search import build_index, nearest, open_index
from clay_hf.search.table import create_ann_index
from clay_hf.utils.benchmarking import call_seconds, latency_ms, write_results

CPU = torch.device("cpu")


def cluster_centres(seed: int, clusters: int, dim: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).standard_normal((clusters, dim), dtype=np.float32)  # (C, D)


def synthetic_vectors(rng: np.random.Generator, centres: np.ndarray, count: int, spread: float) -> np.ndarray:
    """(count, D) float32 draws from the mixture: a random centre + N(0, spread²) noise."""
    vectors = rng.standard_normal((count, centres.shape[1]), dtype=np.float32)
    vectors *= spread
    vectors += centres[rng.integers(0, len(centres), count)]
    return vectors


def vector_chunks(seed: int, centres: np.ndarray, count: int, spread: float, chunk_rows: int) -> Iterator[np.ndarray]:
    """The `count` table vectors, `chunk_rows` at a time; chunk i has its own random stream, so any chunk size gives
    the same vectors for the same seed and chunk_rows."""
    for number, start in enumerate(range(0, count, chunk_rows)):
        rng = np.random.default_rng([seed, 1, number])
        yield synthetic_vectors(rng, centres, min(chunk_rows, count - start), spread)


class ExactTopK:
    """The k nearest rows to each query by cosine distance, updated chunk by chunk (numpy brute force)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)  # (Q, D)
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)  # (Q, k) cosine similarities
        self.rows = np.zeros((len(queries), k), dtype=np.int64)  # (Q, k)
        self.seconds = 0.0

    def update(self, vectors: np.ndarray, offset: int) -> None:
        start = time.perf_counter()
        scores = (self.unit @ vectors.T) / np.linalg.norm(vectors, axis=1)  # (Q, n)
        rows = np.broadcast_to(np.arange(offset, offset + len(vectors)), scores.shape)  # (Q, n)
        scores, rows = np.concatenate([self.scores, scores], axis=1), np.concatenate([self.rows, rows], axis=1)
        top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        self.scores, self.rows = np.take_along_axis(scores, top, axis=1), np.take_along_axis(rows, top, axis=1)
        self.seconds += time.perf_counter() - start

    def result(self) -> np.ndarray:
        """(Q, k) row numbers, nearest first."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.rows, order, axis=1)


def embeddings_schema(dim: int) -> pa.Schema:
    """A mean-level embeddings GeoParquet's schema, as embed.py writes it."""
    metadata = {
        b"geo": json.dumps(geo_metadata([-180.0, -60.0, 180.0, 60.0])).encode(),
        b"clay:embeddings": json.dumps({"level": "mean", "shape": [dim]}).encode(),
    }
    return pa.schema(
        [("source_url", pa.string()), ("date", pa.date32()), ("embeddings", pa.list_(pa.float32(), dim)),
         ("geometry", pa.binary())],
        metadata=metadata,
    )  # fmt: skip


def embeddings_table(vectors: np.ndarray, offset: int, count: int, schema: pa.Schema) -> pa.Table:
    """Rows `offset`… of the embeddings file: `chip_<row>.tif`, a date, the vector, a small footprint on a grid."""
    index = np.arange(offset, offset + len(vectors))
    lon, lat = -180 + (index % 3600) * 0.1, -60 + (index // 3600) * 120 / (count / 3600 + 1)
    boxes = shapely.box(lon, lat, lon + 0.05, lat + 0.05)
    return pa.table(
        {
            "source_url": [f"chip_{i:07d}.tif" for i in index],
            "date": pa.array([dt.date(2020 + i % 4, 1, 1) for i in index], pa.date32()),
            "embeddings": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
            "geometry": pa.array(shapely.to_wkb(boxes), pa.binary()),
        },
        schema=schema,
    )


def write_embeddings(path: Path, chunks: Iterator[np.ndarray], count: int, dim: int, truth: ExactTopK) -> None:
    """Write the chunks to an embeddings GeoParquet, one row group each, and feed each to the exact top k."""
    schema = embeddings_schema(dim)
    offset = 0
    with pq.ParquetWriter(path, schema) as writer:
        for vectors in chunks:
            writer.write_table(embeddings_table(vectors, offset, count, schema))
            truth.update(vectors, offset)
            offset += len(vectors)
            print(f"  wrote {offset} / {count} rows", flush=True)


def measure(table, info, queries: np.ndarray, truth: np.ndarray, k: int, **settings) -> dict:
    """Latency of `nearest` a query (one untimed warm-up query first) and its recall@k against `truth`."""
    nearest(table, info, queries[0], k=k, **settings)
    pending, hits = iter(queries), []
    seconds = call_seconds(
        lambda: hits.append(nearest(table, info, next(pending), k=k, **settings)), CPU, 0, len(queries)
    )
    found = [{int(url[5:12]) for url in hit.column("source_url").to_pylist()} for hit in hits]
    recall = np.mean([len(rows & set(expected.tolist())) / k for rows, expected in zip(found, truth, strict=True)])
    return {**settings, "recall_at_k": float(recall), **latency_ms(seconds)}


def folder_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.5, help="cluster noise σ (centres are N(0, 1))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk_rows", type=int, default=65536, help="vectors generated and written at a time")
    parser.add_argument("--num_queries", type=int, default=100)
    parser.add_argument("--exact_queries", type=int, default=10, help="queries timed without the ANN index")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num_partitions", type=int, help="IVF partitions (default: clay_hf.search's, √rows)")
    parser.add_argument("--max_iterations", type=int, help="k-means iterations of the IVF training")
    parser.add_argument("--sample_rate", type=int, help="k-means training vectors per partition")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--refine_factors", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--workdir", help="where the GeoParquet and the index go (default: a temporary folder)")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    centres = cluster_centres(args.seed, args.clusters, args.dim)
    queries = synthetic_vectors(np.random.default_rng([args.seed, 2]), centres, args.num_queries, args.spread)
    exact = ExactTopK(queries, args.k)
    build = {name: getattr(args, name) for name in ("num_partitions", "max_iterations", "sample_rate")}
    build = {name: value for name, value in build.items() if value is not None}
    seconds, sizes = {}, {}

    folder = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        start = time.perf_counter()
        chunks = vector_chunks(args.seed, centres, args.num_vectors, args.spread, args.chunk_rows)
        write_embeddings(folder / "embeddings.parquet", chunks, args.num_vectors, args.dim, exact)
        seconds["write_geoparquet_and_truth"] = time.perf_counter() - start
        seconds["numpy_exact_truth"] = exact.seconds
        truth = exact.result()
        sizes["geoparquet"] = (folder / "embeddings.parquet").stat().st_size

        start = time.perf_counter()
        info = build_index(folder / "embeddings.parquet", folder / "index", ann_threshold=args.num_vectors + 1)
        seconds["build_table"] = time.perf_counter() - start
        sizes["table"] = folder_bytes(folder / "index")
        print(f"table {seconds['build_table']:.1f} s, {sizes['table'] / 1e9:.2f} GB", flush=True)

        table, info = open_index(folder / "index")
        count = args.exact_queries
        rows = [
            {"index": "none (exact)", "queries": count, **measure(table, info, queries[:count], truth[:count], args.k)}
        ]
        print(rows[-1], flush=True)

        start = time.perf_counter()
        create_ann_index(table, info, **build)
        seconds["build_ivf_pq"] = time.perf_counter() - start
        sizes["table_and_index"] = folder_bytes(folder / "index")
        print(f"IVF-PQ index {seconds['build_ivf_pq']:.1f} s: {info.ann}", flush=True)

        table, info = open_index(folder / "index")
        for nprobes in args.nprobes:
            for refine in args.refine_factors:
                settings = {"nprobes": nprobes, "refine_factor": refine}
                rows.append({"index": "IVF_PQ", "queries": args.num_queries, **measure(table, info, queries, truth, args.k, **settings)})  # fmt: skip
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(folder)

    write_results(
        {
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "load_average_at_end": os.getloadavg(),  # other work on the machine slows every row
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "num_vectors": args.num_vectors,
            "dim": args.dim,
            "clusters": args.clusters,
            "spread": args.spread,
            "chunk_rows": args.chunk_rows,
            "metric": info.metric,
            "num_queries": args.num_queries,
            "k": args.k,
            "seconds": seconds,
            "bytes_on_disk": sizes,
            "ann": info.ann.__dict__,
            "numpy_exact_ms_per_query": 1000 * exact.seconds / args.num_queries,
            "rows": rows,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
