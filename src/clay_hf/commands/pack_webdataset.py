"""`clay-pack-webdataset`: Pack chips into WebDataset tar shards (`.tif` + `.json` per sample) for publishing on the
Hub."""

from __future__ import annotations

import sys

from ..data.dataset import resolve_sources
from ..data.webdataset import pack_webdataset
from ..utils.errors import user_errors
from ._common import packing_parser, print_packing


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Pack chips into WebDataset tar shards (`.tif` + `.json` per sample) for publishing on the Hub."""
    parser = packing_parser(main)
    parser.add_argument("--resume", action="store_true", help="keep complete shards and pack only the chips they lack")
    args = parser.parse_args(argv)
    shards, bad = pack_webdataset(
        resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix, resume=args.resume
    )
    print_packing(args.output_dir, len(shards), bad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
