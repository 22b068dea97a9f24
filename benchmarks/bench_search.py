"""Similarity search at scale: index build time, query latency and recall@10 of the ANN index, in one run.

    python benchmarks/bench_search.py --num_vectors 1000000 --dim 768 --output benchmarks/results/bench_search.json

Writes an embeddings GeoParquet of synthetic vectors (a mixture of Gaussian clusters, as embeddings of places are
clustered; pure noise would be the worst case of any ANN index), builds the LanceDB table through
`clay_hf.search.build_index` (timed: table, then IVF-PQ index), then queries it with fresh vectors from the same
distribution through `clay_hf.search.nearest`: exact search (no index) and IVF-PQ at several nprobes/refine_factor,
reporting latency and recall@10 against numpy brute force.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from clay_hf.embeddings import geo_metadata
from clay_hf.search import build_index, nearest, open_index
from clay_hf.search.table import create_ann_index


def synthetic_vectors(rng, centres: np.ndarray, count: int, spread: float) -> np.ndarray:
    labels = rng.integers(0, len(centres), count)
    return (centres[labels] + spread * rng.standard_normal((count, centres.shape[1]), dtype=np.float32)).astype(
        np.float32
    )


def write_embeddings(path: Path, vectors: np.ndarray, rows_per_group: int = 65536) -> None:
    """A mean-level embeddings GeoParquet of `vectors` with small footprints on a grid."""
    count, dim = vectors.shape
    metadata = {
        b"geo": json.dumps(geo_metadata([-180.0, -60.0, 180.0, 60.0])).encode(),
        b"clay:embeddings": json.dumps({"level": "mean", "shape": [dim]}).encode(),
    }
    schema = pa.schema(
        [("source_url", pa.string()), ("date", pa.date32()), ("embeddings", pa.list_(pa.float32(), dim)),
         ("geometry", pa.binary())],
        metadata=metadata,
    )  # fmt: skip
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, rows_per_group):
            index = np.arange(start, min(start + rows_per_group, count))
            lon, lat = -180 + (index % 3600) * 0.1, -60 + (index // 3600) * 120 / (count / 3600 + 1)
            boxes = shapely.box(lon, lat, lon + 0.05, lat + 0.05)
            table = pa.table(
                {
                    "source_url": [f"chip_{i:07d}.tif" for i in index],
                    "date": pa.array([dt.date(2020 + i % 4, 1, 1) for i in index], pa.date32()),
                    "embeddings": pa.FixedSizeListArray.from_arrays(pa.array(vectors[index].ravel()), dim),
                    "geometry": pa.array(shapely.to_wkb(boxes), pa.binary()),
                },
                schema=schema,
            )
            writer.write_table(table)


def exact_top_k(vectors: np.ndarray, norms: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) row indices of the k nearest by cosine distance (numpy brute force, in blocks)."""
    scores = np.empty((len(queries), len(vectors)), dtype=np.float32)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for start in range(0, len(vectors), 131072):
        block = slice(start, start + 131072)
        scores[:, block] = (vectors[block] @ unit.T).T / norms[block]
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def measure(table, info, queries: np.ndarray, truth: np.ndarray, k: int, **settings) -> dict:
    latencies, recalls = [], []
    for query, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        hits = nearest(table, info, query, k=k, **settings)
        latencies.append(time.perf_counter() - start)
        found = {int(url[5:12]) for url in hits.column("source_url").to_pylist()}
        recalls.append(len(found & set(expected.tolist())) / k)
    return {
        **settings,
        "recall_at_k": float(np.mean(recalls)),
        "latency_ms_median": 1000 * float(np.median(latencies)),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.5, help="cluster noise σ (centres are N(0, 1))")
    parser.add_argument("--num_queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--refine_factors", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--workdir", help="where the GeoParquet and the index go (default: a temporary folder)")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    vectors = synthetic_vectors(rng, centres, args.num_vectors, args.spread)
    queries = synthetic_vectors(rng, centres, args.num_queries, args.spread)
    norms = np.linalg.norm(vectors, axis=1)

    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        folder = Path(folder)
        start = time.perf_counter()
        write_embeddings(folder / "embeddings.parquet", vectors)
        write_seconds = time.perf_counter() - start
        start = time.perf_counter()
        info = build_index(folder / "embeddings.parquet", folder / "index", ann_threshold=args.num_vectors + 1)
        table_seconds = time.perf_counter() - start
        start = time.perf_counter()
        truth = exact_top_k(vectors, norms, queries, args.k)
        numpy_ms = 1000 * (time.perf_counter() - start) / args.num_queries
        del vectors

        table, info = open_index(folder / "index")
        rows = [{"index": "none (exact)", **measure(table, info, queries[:20], truth[:20], args.k)}]
        print(rows[-1])
        start = time.perf_counter()
        create_ann_index(table, info)
        index_seconds = time.perf_counter() - start
        print(f"table {table_seconds:.1f} s, IVF-PQ index {index_seconds:.1f} s: {info.ann}")
        table, info = open_index(folder / "index")
        for nprobes in args.nprobes:
            for refine in args.refine_factors:
                rows.append(
                    {"index": "IVF_PQ", **measure(table, info, queries, truth, args.k, nprobes=nprobes, refine_factor=refine)}
                )  # fmt: skip
                print(rows[-1])

    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "load_average_at_end": os.getloadavg(),  # other work on the machine slows every row
        "num_vectors": args.num_vectors,
        "dim": args.dim,
        "clusters": args.clusters,
        "spread": args.spread,
        "metric": info.metric,
        "num_queries": args.num_queries,
        "k": args.k,
        "seconds": {"write_geoparquet": write_seconds, "build_table": table_seconds, "build_ivf_pq": index_seconds},
        "ann": info.ann.__dict__,
        "numpy_exact_ms_per_query": numpy_ms,
        "rows": rows,
    }
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
