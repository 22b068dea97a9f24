"""`search.py index …` and `search.py query …` (the `clay-search` console script)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from ..search.table import ANN_THRESHOLD, INDEX_TYPES, METRICS
from ..utils.errors import user_errors
from ..utils.outputs import OutputLock
from ._common import CommandParser, arguments_from


@dataclass(kw_only=True)
class IndexArguments:
    """The arguments of `clay-search index`."""

    embeddings: str = field(metadata={"help": "a GeoParquet written by embed.py (mean or patch level)"})
    index_dir: str = field(
        metadata={"help": "the LanceDB folder to write (replaced whole once the new index is complete)"}
    )
    metric: str = field(default="cosine", metadata={"help": "cosine (1 − cos) or l2 (Euclidean)", "choices": METRICS})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "the model that made the embeddings (to embed new query chips)"}
    )
    ann_threshold: int = field(default=ANN_THRESHOLD, metadata={"help": "rows from which an ANN index is built"})
    index_type: str = field(default="IVF_PQ", metadata={"choices": INDEX_TYPES})
    max_iterations: int | None = field(
        default=None, metadata={"help": "k-means iterations training the IVF partitions (LanceDB's default: 50)"}
    )
    sample_rate: int | None = field(
        default=None, metadata={"help": "vectors per partition sampled for k-means (LanceDB's default: 256)"}
    )


@dataclass(kw_only=True)
class QueryArguments:
    """The arguments of `clay-search query`."""

    index_dir: str
    like: list[str] = field(
        default_factory=list,
        metadata={"help": "source URLs in the index or chip files", "nargs": "+", "action": "extend"},
    )
    point: list[float] | None = field(
        default=None, metadata={"help": "the chip covering this place", "nargs": 2, "metavar": ("LON", "LAT")}
    )
    k: int = 10
    where: str | None = field(default=None, metadata={"help": "SQL filter, e.g. \"date >= '2022-01-01'\""})
    bbox: list[float] | None = field(
        default=None, metadata={"nargs": 4, "metavar": ("MINLON", "MINLAT", "MAXLON", "MAXLAT")}
    )
    output: str = field(metadata={"help": "the GeoParquet file of hits to write"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "embed new chips with this model instead of the recorded one"}
    )
    nprobes: int | None = field(default=None, metadata={"help": "IVF partitions to search (ANN index only)"})
    refine_factor: int | None = field(
        default=None, metadata={"help": "re-rank refine_factor·k candidates exactly (IVF-PQ only)"}
    )


#: Each subcommand with its help line and its arguments.
SUBCOMMANDS = {
    "index": ("build a search table from an embeddings GeoParquet", IndexArguments),
    "query": ("the k nearest chips (or patches) as GeoParquet", QueryArguments),
}


def parse(argv: list[str] | None = None) -> IndexArguments | QueryArguments:
    """The arguments of the subcommand `argv` names."""
    parser = CommandParser(description="Similarity search over Clay embeddings (LanceDB).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, arguments) in SUBCOMMANDS.items():
        commands.add_parser(name, help=summary, dataclass_types=arguments)
    namespace = parser.parse_args(argv)
    return arguments_from(namespace, SUBCOMMANDS[namespace.command][1])


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Build a search index (`index`) or query one (`query`); each holds its output's lock (one writer per index
    folder, per hits file)."""
    from ..search.query import search
    from ..search.table import build_index

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse(argv)
    if isinstance(args, IndexArguments):
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
        with OutputLock(args.output):
            hits = search(
                args.index_dir, args.like, args.point, args.k, args.where, args.bbox, args.output,
                args.model_name_or_path, args.nprobes, args.refine_factor,
            )  # fmt: skip
        print(f"wrote {hits.num_rows} nearest to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
