"""`search.py index …` and `search.py query …` (the `clay-search` console script)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..search.table import ANN_THRESHOLD, INDEX_TYPES, METRICS
from ..utils.errors import user_errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Similarity search over Clay embeddings (LanceDB).")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="build a search table from an embeddings GeoParquet")
    index.add_argument("--embeddings", required=True, help="a GeoParquet written by embed.py (mean or patch level)")
    index.add_argument("--index_dir", required=True, help="the LanceDB folder to write (its table is replaced)")
    index.add_argument("--metric", choices=METRICS, default="cosine", help="cosine (1 − cos) or l2 (Euclidean)")
    index.add_argument("--model_name_or_path", help="the model that made the embeddings (to embed new query chips)")
    index.add_argument("--ann_threshold", type=int, default=ANN_THRESHOLD, help="rows from which an ANN index is built")
    index.add_argument("--index_type", choices=INDEX_TYPES, default="IVF_PQ")
    index.add_argument(
        "--max_iterations", type=int, help="k-means iterations training the IVF partitions (LanceDB's default: 50)"
    )
    index.add_argument(
        "--sample_rate", type=int, help="vectors per partition sampled for k-means (LanceDB's default: 256)"
    )

    query = commands.add_parser("query", help="the k nearest chips (or patches) as GeoParquet")
    query.add_argument("--index_dir", required=True)
    query.add_argument("--like", nargs="+", action="extend", default=[], help="source URLs in the index or chip files")
    query.add_argument("--point", nargs=2, type=float, metavar=("LON", "LAT"), help="the chip covering this place")
    query.add_argument("--k", type=int, default=10)
    query.add_argument("--where", help="SQL filter, e.g. \"date >= '2022-01-01'\"")
    query.add_argument("--bbox", nargs=4, type=float, metavar=("MINLON", "MINLAT", "MAXLON", "MAXLAT"))
    query.add_argument("--output", required=True, help="the GeoParquet file of hits to write")
    query.add_argument("--model_name_or_path", help="embed new chips with this model instead of the recorded one")
    query.add_argument("--nprobes", type=int, help="IVF partitions to search (ANN index only)")
    query.add_argument("--refine_factor", type=int, help="re-rank refine_factor·k candidates exactly (IVF-PQ only)")
    return parser


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Build a search index (`index`) or query one (`query`)."""
    from ..search.query import search
    from ..search.table import build_index

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    if args.command == "index":
        training = {"max_iterations": args.max_iterations, "sample_rate": args.sample_rate}
        info = build_index(
            args.embeddings, args.index_dir, args.metric, args.model_name_or_path, args.ann_threshold,
            args.index_type, **{name: value for name, value in training.items() if value is not None},
        )  # fmt: skip
        ann = f"an {info.ann.index_type} index" if info.ann else f"no ANN index (under {args.ann_threshold} rows)"
        print(
            f"indexed {info.rows} {info.level}-level rows ({info.skipped} skipped) in {args.index_dir}: "
            f"{info.metric} distance, {ann}"
        )
    else:
        hits = search(
            args.index_dir, args.like, args.point, args.k, args.where, args.bbox, args.output,
            args.model_name_or_path, args.nprobes, args.refine_factor,
        )  # fmt: skip
        print(f"wrote {hits.num_rows} nearest to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
