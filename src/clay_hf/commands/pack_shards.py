"""`clay-pack-shards`: Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format that reads
fastest."""

from __future__ import annotations

import sys

from ..data.dataset import resolve_sources
from ..data.shards import DEFAULT_CODEC, DEFAULT_SHUFFLE, SHUFFLES, pack_shards
from ..utils.errors import user_errors
from ._common import packing_parser, print_packing


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format that reads fastest."""
    parser = packing_parser(main)
    parser.add_argument("--codec", default=DEFAULT_CODEC, help="zstd[:LEVEL], lz4[:LEVEL] or none")
    parser.add_argument(
        "--shuffle", default=DEFAULT_SHUFFLE, choices=SHUFFLES, help="bands byte-shuffled before compression"
    )
    parser.add_argument("--num_workers", type=int, default=0, help="processes packing shards in parallel")
    parser.add_argument("--overwrite", action="store_true", help="rewrite shards already in --output_dir")
    args = parser.parse_args(argv)
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
