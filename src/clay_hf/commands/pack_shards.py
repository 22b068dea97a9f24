"""`clay-pack-shards`: Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format that reads
fastest."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..data.dataset import resolve_sources
from ..data.shards import DEFAULT_CODEC, DEFAULT_SHUFFLE, SHUFFLES, pack_shards
from ..utils.errors import user_errors
from ._common import CommandParser, PackingArguments, print_packing


@dataclass(kw_only=True)
class PackShardsArguments(PackingArguments):
    """The arguments of `clay-pack-shards`."""

    codec: str = field(default=DEFAULT_CODEC, metadata={"help": "zstd[:LEVEL], lz4[:LEVEL] or none"})
    shuffle: str = field(
        default=DEFAULT_SHUFFLE, metadata={"help": "bands byte-shuffled before compression", "choices": SHUFFLES}
    )
    num_workers: int = field(default=0, metadata={"help": "processes packing shards in parallel"})
    # A plain switch: `--overwrite CHIPS …` must not read the positional as a yes/no word.
    overwrite: bool = field(
        default=False, metadata={"help": "rewrite shards already in --output_dir", "action": "store_true"}
    )


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format that reads fastest."""
    parser = CommandParser(PackShardsArguments, description=main.__doc__)
    (args,) = parser.parse(argv)
    try:
        report = pack_shards(
            resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix, args.codec,
            args.num_workers, args.overwrite, args.shuffle,
        )  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    print_packing(args.output_dir, len(report.shards), report.bad, report.chips)
    return 0


if __name__ == "__main__":
    sys.exit(main())
