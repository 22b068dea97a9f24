"""`clay-make-chips`: Cut GeoTIFFs into v0-format chips, stack band files or STAC items into chips, or write synthetic
chips."""

from __future__ import annotations

import argparse
import re
import sys

from rasterio.enums import Resampling

from ..chipping.datacube import BandSource, band_sources, make_datacube_chips
from ..chipping.stac import search_stac_items, stac_band_sources
from ..chipping.tiling import ChipReport, make_chips, write_synthetic_chips
from ..data.chips import ChipError
from ..data.dataset import resolve_sources
from ..utils.errors import user_errors
from ..utils.outputs import OutputLock, make_folder, remove_partials


def _make_chips(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """make_chips_main's work, under the output's lock."""
    if args.synthetic:
        paths = write_synthetic_chips(args.output_dir, args.synthetic, size=args.chip_size, seed=args.seed)
        print(f"wrote {len(paths)} synthetic chips to {args.output_dir}")
        return 0
    if args.band or args.stac_item or args.stac_search:
        if args.sources:
            parser.error("give either stacked GeoTIFFs or --band / --stac_item, not both")
        return _stack_chips(args, parser)
    if not args.sources:
        parser.error("give GeoTIFFs to cut, --band NAME=PATH files, --stac_item, or --synthetic N")
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
            _print_chip_report(report, source)
            written, skipped = written + len(report.written), skipped + len(report.skipped)
    print(f"total: wrote {written} chips to {args.output_dir}, skipped {skipped}, {failed} sources failed")
    return 1 if failed and not written else 0


def _print_chip_report(report: ChipReport, head: str, tail: str = "") -> None:
    """Each skipped chip with its reason, then the report's summary line."""
    for label, reason in report.skipped:
        print(f"skipped {label}: {reason}")
    print(f"{head}: {report.summary()}{tail}")


def _stack_chips(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The datacube branch of make_chips_main: --band files and --stac_item assets → one chip set; with
    --stac_search, one chip set per item found (each with the --band files and --stac_item assets)."""
    bands = []
    for text in args.band:
        name, sep, path = text.partition("=")
        if not sep or not path:
            parser.error(f"--band takes NAME=PATH, got {text!r}")
        index = re.fullmatch(r"(?P<path>.+)#(?P<band>\d+)", path)
        bands.append(BandSource(name, index["path"], int(index["band"])) if index else BandSource(name, path))
    cloud_mask = None
    if args.cloud_mask:
        kind, sep, cloud_mask = args.cloud_mask.partition("=")
        if not sep or kind.lower() != "scl" or not cloud_mask:
            parser.error(f"--cloud_mask takes scl=PATH, got {args.cloud_mask!r}")
    runs: list[list] = [list(args.stac_item)]
    if args.stac_search:
        try:
            found = search_stac_items(args.stac_search, args.collections, args.bbox, args.datetime, args.max_items)
        except (ImportError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{args.stac_search}: {len(found)} items found")
        runs = [[item, *args.stac_item] for item in found]
    written = failed = 0
    for items in runs:
        try:
            report, names = _stack_one(args, bands, items, cloud_mask)
        except (ChipError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        _print_chip_report(report, f"stacked {', '.join(names)}", f" in {args.output_dir}")
        written += len(report.written)
    if len(runs) > 1:
        print(f"total: wrote {written} chips from {len(runs)} stacks, {failed} failed")
    return 1 if failed and not written else 0


def _stack_one(
    args: argparse.Namespace, bands: list[BandSource], items: list, cloud_mask: str | None
) -> tuple[ChipReport, list[str]]:
    """One chip set from band files plus the assets of STAC items (the items' own date wins over `--date`, the
    fallback; the `--tile` flag wins over the items' tile)."""
    source_date, tile = None, args.tile
    if items:
        found = stac_band_sources(items)
        bands = [*found.bands, *bands]
        cloud_mask, source_date, tile = cloud_mask or found.cloud_mask, found.date, tile or found.tile
    report = make_datacube_chips(
        bands, args.output_dir, date=args.date, source_date=source_date, chip_size=args.chip_size, crs=args.crs, resolution=args.resolution,
        resampling=args.resampling, cloud_mask=cloud_mask, max_nodata_fraction=args.max_nodata_fraction,
        max_cloud_fraction=args.max_cloud_fraction, dtype=args.dtype, tile=tile,
    )  # fmt: skip
    return report, [source.name for source in band_sources(bands)]


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Cut GeoTIFFs into v0-format chips, stack band files or STAC items into chips, or write synthetic chips."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sources", nargs="*", help="stacked GeoTIFFs to cut (paths, globs or URLs)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chip_size", type=int, default=512)
    parser.add_argument("--date", help="acquisition date YYYY-MM-DD, when the source has no 'date' tag")
    parser.add_argument("--tile", help="tile id in the chip names (default: the source file name)")
    parser.add_argument("--max_nodata_fraction", type=float, default=0.0, help="skip chips with more nodata")
    parser.add_argument("--dtype", default="float32", help="'float32' (v0) or 'source'")
    parser.add_argument("--synthetic", type=int, default=0, help="write N synthetic 13-band v0 chips instead")
    parser.add_argument("--seed", type=int, default=0)
    stack = parser.add_argument_group("stacking band files (the datacube step)")
    stack.add_argument("--band", action="append", default=[], metavar="NAME=PATH[#N]", help="a band file: clay name or alias (B02, VV, …); #N: band N of a multiband file")  # fmt: skip
    stack.add_argument("--stac_item", action="append", default=[], metavar="ITEM", help="a STAC item (path or URL); repeat for several sensors")  # fmt: skip
    stack.add_argument("--cloud_mask", metavar="scl=PATH", help="Sentinel-2 SCL raster: clouds and shadows become nodata")  # fmt: skip
    stack.add_argument("--stac_search", metavar="API_URL", help="search a STAC API (needs pystac-client); one stack per item found")  # fmt: skip
    stack.add_argument("--collections", nargs="+", help="collections to search (e.g. sentinel-2-l2a)")
    stack.add_argument("--bbox", nargs=4, type=float, metavar=("WEST", "SOUTH", "EAST", "NORTH"), help="search area, degrees")  # fmt: skip
    stack.add_argument("--datetime", help="search time range, e.g. 2023-06-01/2023-06-30")
    stack.add_argument("--max_items", type=int, default=10, help="at most this many items from the search")
    stack.add_argument("--max_cloud_fraction", type=float, default=0.0, help="skip chips with more cloud or shadow")
    stack.add_argument("--crs", help="target CRS (default: the finest band's, among projected ones)")
    stack.add_argument("--resolution", type=float, help="target pixel size in the target CRS's units")
    stack.add_argument("--resampling", default="bilinear", choices=[r.name for r in Resampling], metavar="METHOD", help="GDAL resampling of warped bands (default bilinear)")  # fmt: skip
    args = parser.parse_args(argv)
    with OutputLock(args.output_dir):  # one writer per chip folder; a killed run's partial chips go first
        remove_partials(make_folder(args.output_dir))
        return _make_chips(args, parser)


if __name__ == "__main__":
    sys.exit(main())
