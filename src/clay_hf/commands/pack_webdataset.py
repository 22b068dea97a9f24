"""`clay-pack-webdataset`: Pack chips into WebDataset tar shards (`.tif` + `.json` per sample) for publishing on the
Hub."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..data.dataset import resolve_sources
from ..data.webdataset import pack_webdataset
from ..utils.errors import user_errors
from ._common import PackingArguments, parse_arguments, print_packing


@dataclass(kw_only=True)
class PackWebDatasetArguments(PackingArguments):
    """The arguments of `clay-pack-webdataset`."""

    # A plain switch: `--resume CHIPS …` must not read the positional as a yes/no word.
    resume: bool = field(
        default=False,
        metadata={"help": "keep complete shards and pack only the chips they lack", "action": "store_true"},
    )


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Pack chips into WebDataset tar shards (`.tif` + `.json` per sample) for publishing on the Hub."""
    args = parse_arguments(PackWebDatasetArguments, argv, main.__doc__)
    shards, bad = pack_webdataset(
        resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix, resume=args.resume
    )
    print_packing(args.output_dir, len(shards), bad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
