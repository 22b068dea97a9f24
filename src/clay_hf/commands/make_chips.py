"""`clay-make-chips`: Cut GeoTIFFs into v0-format chips, stack band files or STAC items into chips, or write synthetic
chips."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field

from rasterio.enums import Resampling

from ..chipping.datacube import BandSource, band_sources, make_datacube_chips
from ..chipping.stac import search_stac_items, stac_band_sources
from ..chipping.tiling import ChipReport, make_chips, write_synthetic_chips
from ..data.chips import ChipError
from ..data.dataset import resolve_sources
from ..utils.errors import user_errors
from ..utils.outputs import OutputLock, make_folder, remove_partials
from ._common import CommandParser


@dataclass(kw_only=True)
class ChipArguments:
    """The arguments of `clay-make-chips`: what to cut (or how many synthetic chips) and the chips' shape."""

    sources: list[str] = field(
        default_factory=list,
        metadata={"positional": True, "nargs": "*", "help": "stacked GeoTIFFs to cut (paths, globs or URLs)"},
    )
    output_dir: str
    chip_size: int = 512
    date: str | None = field(
        default=None, metadata={"help": "acquisition date YYYY-MM-DD, when the source has no 'date' tag"}
    )
    tile: str | None = field(
        default=None, metadata={"help": "tile id in the chip names (default: the source file name)"}
    )
    max_nodata_fraction: float = field(default=0.0, metadata={"help": "skip chips with more nodata"})
    dtype: str = field(default="float32", metadata={"help": "'float32' (v0) or 'source'"})
    synthetic: int = field(default=0, metadata={"help": "write N synthetic 13-band v0 chips instead"})
    seed: int = 0


@dataclass(kw_only=True)
class StackArguments:
    """The arguments of `clay-make-chips` that stack band files or STAC items (the datacube step)."""

    _argument_group_name = "stacking band files (the datacube step)"

    band: list[str] = field(
        default_factory=list,
        metadata={
            "help": "a band file: clay name or alias (B02, VV, …); #N: band N of a multiband file",
            "action": "append",
            "metavar": "NAME=PATH[#N]",
        },
    )
    stac_item: list[str] = field(
        default_factory=list,
        metadata={
            "help": "a STAC item (path or URL); repeat for several sensors",
            "action": "append",
            "metavar": "ITEM",
        },
    )
    cloud_mask: str | None = field(
        default=None,
        metadata={"help": "Sentinel-2 SCL raster: clouds and shadows become nodata", "metavar": "scl=PATH"},
    )
    stac_search: str | None = field(
        default=None,
        metadata={"help": "search a STAC API (needs pystac-client); one stack per item found", "metavar": "API_URL"},
    )
    collections: list[str] | None = field(
        default=None, metadata={"help": "collections to search (e.g. sentinel-2-l2a)"}
    )
    bbox: list[float] | None = field(
        default=None,
        metadata={"help": "search area, degrees", "nargs": 4, "metavar": ("WEST", "SOUTH", "EAST", "NORTH")},
    )
    datetime: str | None = field(default=None, metadata={"help": "search time range, e.g. 2023-06-01/2023-06-30"})
    max_items: int = field(default=10, metadata={"help": "at most this many items from the search"})
    max_cloud_fraction: float = field(default=0.0, metadata={"help": "skip chips with more cloud or shadow"})
    crs: str | None = field(
        default=None, metadata={"help": "target CRS (default: the finest band's, among projected ones)"}
    )
    resolution: float | None = field(default=None, metadata={"help": "target pixel size in the target CRS's units"})
    resampling: str = field(
        default="bilinear",
        metadata={
            "help": "GDAL resampling of warped bands (default bilinear)",
            "choices": [method.name for method in Resampling],
            "metavar": "METHOD",
        },
    )


def _make_chips(chips: ChipArguments, stack: StackArguments, parser: argparse.ArgumentParser) -> int:
    """The work of `main`, under the output's lock."""
    if chips.synthetic:
        paths = write_synthetic_chips(chips.output_dir, chips.synthetic, size=chips.chip_size, seed=chips.seed)
        print(f"wrote {len(paths)} synthetic chips to {chips.output_dir}")
        return 0
    if stack.band or stack.stac_item or stack.stac_search:
        if chips.sources:
            parser.error("give either stacked GeoTIFFs or --band / --stac_item, not both")
        return _stack_chips(chips, stack, parser)
    if not chips.sources:
        parser.error("give GeoTIFFs to cut, --band NAME=PATH files, --stac_item, or --synthetic N")
    written = skipped = failed = 0
    for pattern in chips.sources:
        for source in resolve_sources(pattern):
            try:
                report = make_chips(
                    source,
                    chips.output_dir,
                    chip_size=chips.chip_size,
                    date=chips.date,
                    tile=chips.tile,
                    max_nodata_fraction=chips.max_nodata_fraction,
                    dtype=chips.dtype,
                )
            except (ChipError, ValueError) as error:
                print(f"error: {error}", file=sys.stderr)
                failed += 1
                continue
            _print_chip_report(report, source)
            written, skipped = written + len(report.written), skipped + len(report.skipped)
    print(f"total: wrote {written} chips to {chips.output_dir}, skipped {skipped}, {failed} sources failed")
    return 1 if failed and not written else 0


def _print_chip_report(report: ChipReport, head: str, tail: str = "") -> None:
    """Each skipped chip with its reason, then the report's summary line."""
    for label, reason in report.skipped:
        print(f"skipped {label}: {reason}")
    print(f"{head}: {report.summary()}{tail}")


def _stack_chips(chips: ChipArguments, stack: StackArguments, parser: argparse.ArgumentParser) -> int:
    """The datacube branch of `main`: --band files and --stac_item assets → one chip set; with
    --stac_search, one chip set per item found (each with the --band files and --stac_item assets)."""
    bands = []
    for text in stack.band:
        name, sep, path = text.partition("=")
        if not sep or not path:
            parser.error(f"--band takes NAME=PATH, got {text!r}")
        index = re.fullmatch(r"(?P<path>.+)#(?P<band>\d+)", path)
        bands.append(BandSource(name, index["path"], int(index["band"])) if index else BandSource(name, path))
    cloud_mask = None
    if stack.cloud_mask:
        kind, sep, cloud_mask = stack.cloud_mask.partition("=")
        if not sep or kind.lower() != "scl" or not cloud_mask:
            parser.error(f"--cloud_mask takes scl=PATH, got {stack.cloud_mask!r}")
    runs: list[list] = [list(stack.stac_item)]
    if stack.stac_search:
        try:
            found = search_stac_items(stack.stac_search, stack.collections, stack.bbox, stack.datetime, stack.max_items)
        except (ImportError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{stack.stac_search}: {len(found)} items found")
        runs = [[item, *stack.stac_item] for item in found]
    written = failed = 0
    for items in runs:
        try:
            report, names = _stack_one(chips, stack, bands, items, cloud_mask)
        except (ChipError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        _print_chip_report(report, f"stacked {', '.join(names)}", f" in {chips.output_dir}")
        written += len(report.written)
    if len(runs) > 1:
        print(f"total: wrote {written} chips from {len(runs)} stacks, {failed} failed")
    return 1 if failed and not written else 0


def _stack_one(
    chips: ChipArguments, stack: StackArguments, bands: list[BandSource], items: list, cloud_mask: str | None
) -> tuple[ChipReport, list[str]]:
    """One chip set from band files plus the assets of STAC items (the items' own date wins over `--date`, the
    fallback; the `--tile` flag wins over the items' tile)."""
    source_date, tile = None, chips.tile
    if items:
        found = stac_band_sources(items)
        bands = [*found.bands, *bands]
        cloud_mask, source_date, tile = cloud_mask or found.cloud_mask, found.date, tile or found.tile
    report = make_datacube_chips(
        bands, chips.output_dir, date=chips.date, source_date=source_date, chip_size=chips.chip_size, crs=stack.crs,
        resolution=stack.resolution, resampling=stack.resampling, cloud_mask=cloud_mask,
        max_nodata_fraction=chips.max_nodata_fraction, max_cloud_fraction=stack.max_cloud_fraction,
        dtype=chips.dtype, tile=tile,
    )  # fmt: skip
    return report, [source.name for source in band_sources(bands)]


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Cut GeoTIFFs into v0-format chips, stack band files or STAC items into chips, or write synthetic chips."""
    parser = CommandParser((ChipArguments, StackArguments), description=main.__doc__)
    chips, stack = parser.parse(argv)
    with OutputLock(chips.output_dir):  # one writer per chip folder; a killed run's partial chips go first
        remove_partials(make_folder(chips.output_dir))
        return _make_chips(chips, stack, parser)


if __name__ == "__main__":
    sys.exit(main())
