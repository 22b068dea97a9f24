"""Command-line entry points for the data tools (`scripts/*.py` and the `clay-*` console scripts)."""

from __future__ import annotations

import argparse
import sys

from .data.chips import ChipError
from .data.dataset import resolve_sources
from .data.tiling import make_chips, write_synthetic_chips
from .data.webdataset import pack_webdataset


def make_chips_main(argv: list[str] | None = None) -> int:
    """Cut GeoTIFFs into v0-format chips, or write synthetic v0 chips (`--synthetic N`)."""
    parser = argparse.ArgumentParser(description=make_chips_main.__doc__)
    parser.add_argument("sources", nargs="*", help="GeoTIFFs to cut (paths, globs or URLs)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chip_size", type=int, default=512)
    parser.add_argument("--date", help="acquisition date YYYY-MM-DD, when the source has no 'date' tag")
    parser.add_argument("--tile", help="tile id in the chip names (default: the source file name)")
    parser.add_argument("--max_nodata_fraction", type=float, default=0.0, help="skip chips with more nodata")
    parser.add_argument("--dtype", default="float32", help="'float32' (v0) or 'source'")
    parser.add_argument("--synthetic", type=int, default=0, help="write N synthetic 13-band v0 chips instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.synthetic:
        paths = write_synthetic_chips(args.output_dir, args.synthetic, size=args.chip_size, seed=args.seed)
        print(f"wrote {len(paths)} synthetic chips to {args.output_dir}")
        return 0
    if not args.sources:
        parser.error("give GeoTIFFs to cut, or --synthetic N")
    written = skipped = failed = 0
    for pattern in args.sources:
        for source in resolve_sources(pattern):
            try:
                report = make_chips(
                    source,
                    args.output_dir,
                    chip_size=args.chip_size,
                    date=args.date,
                    tile=args.tile,
                    max_nodata_fraction=args.max_nodata_fraction,
                    dtype=args.dtype,
                )
            except (ChipError, ValueError) as error:
                print(f"error: {error}", file=sys.stderr)
                failed += 1
                continue
            for label, reason in report.skipped:
                print(f"skipped {label}: {reason}")
            print(f"{source}: {report.summary()}")
            written, skipped = written + len(report.written), skipped + len(report.skipped)
    print(f"total: wrote {written} chips to {args.output_dir}, skipped {skipped}, {failed} sources failed")
    return 1 if failed and not written else 0


def pack_webdataset_main(argv: list[str] | None = None) -> int:
    """Pack chips into WebDataset tar shards (`.tif` + `.json` per sample) for publishing on the Hub."""
    parser = argparse.ArgumentParser(description=pack_webdataset_main.__doc__)
    parser.add_argument("source", help="a folder, glob or list file of chips")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chips_per_shard", type=int, default=256)
    parser.add_argument("--prefix", default="chips")
    args = parser.parse_args(argv)
    shards, bad = pack_webdataset(resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix)
    for error in bad:
        print(f"skipped {error}")
    print(f"wrote {len(shards)} shards to {args.output_dir}, skipped {len(bad)} bad chips")
    return 0
