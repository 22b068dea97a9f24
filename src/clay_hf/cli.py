"""Command-line entry points (`scripts/*.py` and the `clay-*` console scripts).

A user mistake (a missing folder, a model folder that cannot be published, a checkpoint that cannot be converted)
is one line on stderr and exit status 1, never a traceback: see [`clay_hf.utils.errors.user_errors`].
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from rasterio.enums import Resampling

from .data.chips import ChipError
from .data.datacube import BandSource, band_sources, make_datacube_chips
from .data.dataset import resolve_sources
from .data.shards import DEFAULT_CODEC, DEFAULT_SHUFFLE, SHUFFLES, pack_shards
from .data.stac import search_stac_items, stac_band_sources
from .data.tiling import ChipReport, make_chips, write_synthetic_chips
from .data.webdataset import pack_webdataset
from .utils.errors import user_errors
from .utils.outputs import OutputLock, make_folder, remove_partials


@user_errors
def make_chips_main(argv: list[str] | None = None) -> int:
    """Cut GeoTIFFs into v0-format chips, stack band files or STAC items into chips, or write synthetic chips."""
    parser = argparse.ArgumentParser(description=make_chips_main.__doc__)
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


def _packing_parser(main: Callable[..., int]) -> argparse.ArgumentParser:
    """The arguments every packer takes: the chips, where the shards go, how many chips each holds."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", help="chips: a folder, glob, list file or URL")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chips_per_shard", type=int, default=256)
    parser.add_argument("--prefix", default="chips")
    return parser


def _print_packing(output_dir: str, shards: int, bad: list, chips: int | None = None) -> None:
    """Each skipped chip with its reason, then the totals."""
    for message in bad:
        print(f"skipped {message}")
    held = "" if chips is None else f" hold {chips} chips;"
    print(f"{shards} shards in {output_dir}{held} skipped {len(bad)} bad chips")


@user_errors
def pack_webdataset_main(argv: list[str] | None = None) -> int:
    """Pack chips into WebDataset tar shards (`.tif` + `.json` per sample) for publishing on the Hub."""
    parser = _packing_parser(pack_webdataset_main)
    parser.add_argument("--resume", action="store_true", help="keep complete shards and pack only the chips they lack")
    args = parser.parse_args(argv)
    shards, bad = pack_webdataset(
        resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix, resume=args.resume
    )
    _print_packing(args.output_dir, len(shards), bad)
    return 0


@user_errors
def pack_shards_main(argv: list[str] | None = None) -> int:
    """Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format that reads fastest."""
    parser = _packing_parser(pack_shards_main)
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
    _print_packing(args.output_dir, len(report.shards), report.bad, report.chips)
    return 0


@user_errors
def embed_main(argv: list[str] | None = None) -> int:
    """Embed GeoTIFF chips with a Clay encoder and write GeoParquet (v0 format); under `accelerate launch`, every
    process embeds its own share."""
    import torch

    from .embeddings import EMBEDDINGS_DTYPES, LEVELS, embed_to_geoparquet, load_encoder
    from .evaluation import load_pretraining_model
    from .image_processing_clay import parse_fill_value
    from .ranks import RANK_TIMEOUT_SECONDS, current_rank

    parser = argparse.ArgumentParser(description=embed_main.__doc__)
    parser.add_argument("--model_name_or_path", help="a save_pretrained folder or a Hub id")
    parser.add_argument("--onnx", help="an encoder exported by export_onnx.py, run by ONNX Runtime (CPU)")
    parser.add_argument("--data_dir", required=True, help="chips: a folder, glob, list file or URL")
    parser.add_argument("--output", required=True, help="the GeoParquet file to write")
    parser.add_argument("--level", choices=LEVELS, default="mean", help="mean (D), patch (h·w·D) or group (G·h·w·D)")
    parser.add_argument(
        "--bands",
        nargs="+",
        help="the chips' band names in the chips' order (default: each chip's band descriptions, else the 13 v0 "
        "bands); the model picks its bands from them by name",
    )
    parser.add_argument(
        "--fill_value",
        type=parse_fill_value,
        help="embed chips with nodata/NaN pixels, filled with 'mean' (the band mean) or a raw value; by default "
        "such chips are skipped and reported",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="chip side (or height width) in pixels, multiples of the patch size (default: the model's)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision")
    parser.add_argument(
        "--embeddings_dtype", choices=list(EMBEDDINGS_DTYPES), default="float32", help="stored values (float16: half)"
    )
    parser.add_argument(
        "--reconstruction_error",
        action="store_true",
        help="also store each chip's masked reconstruction error (needs a pretraining model, with its decoder)",
    )
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--rows_per_part", type=int, default=1024, help="rows per durable part file")
    parser.add_argument("--resume", action="store_true", help="keep finished parts and skip their chips")
    parser.add_argument(
        "--rank_timeout",
        type=float,
        default=RANK_TIMEOUT_SECONDS,
        help="under accelerate launch: give up on ranks that show no sign of life for this many seconds",
    )
    args = parser.parse_args(argv)
    if (args.model_name_or_path is None) == (args.onnx is None):
        parser.error("give --model_name_or_path or --onnx (one of them)")
    if args.onnx and args.dtype != "fp32":
        parser.error("--dtype is PyTorch's autocast; an ONNX encoder runs as exported (float32)")
    if args.onnx and args.reconstruction_error:
        parser.error("--reconstruction_error needs the PyTorch pretraining model (--model_name_or_path)")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.image_size and len(args.image_size) > 2:
        parser.error("--image_size takes a side, or a height and a width")
    image_size = tuple(args.image_size) if args.image_size else None
    rank = current_rank(args.device)
    reconstruction = None
    if args.onnx:
        from .export import OnnxEncoder

        model = OnnxEncoder(args.onnx)
        processor = model.processor
    elif args.reconstruction_error:
        reconstruction, processor = load_pretraining_model(args.model_name_or_path, rank.device)
        model = reconstruction.clay
    else:
        model, processor = load_encoder(args.model_name_or_path, rank.device)
    run = embed_to_geoparquet(
        model, processor, args.data_dir, args.output, level=args.level, bands=args.bands, batch_size=args.batch_size,
        dtype=dtype, num_workers=args.num_workers, rows_per_part=args.rows_per_part, resume=args.resume,
        embeddings_dtype=args.embeddings_dtype, rank=rank, fill_value=args.fill_value, image_size=image_size,
        reconstruction=reconstruction, rank_timeout=args.rank_timeout,
    )  # fmt: skip
    if rank.is_main:
        print(
            f"wrote {run.output}: {run.embedded} chips embedded ({run.skipped_done} already done, "
            f"{run.bad_chips} bad chips skipped), embeddings of shape {run.shape}; {run.throughput}"
        )
    if rank.is_main and run.embedded == 0 and run.skipped_done == 0 and run.bad_chips:
        from .data.sources import NoUsableChipsError

        raise NoUsableChipsError(
            f"no chip of {args.data_dir} could be embedded: all {run.bad_chips} were bad (the warnings above name "
            f"each and say why); {run.output} holds no rows"
        )
    return 0


@user_errors
def reconstruct_main(argv: list[str] | None = None) -> int:
    """Save PNGs of input, masked input, reconstruction and per-group error for N chips (fixed seed)."""
    from .evaluation import load_pretraining_model
    from .visualize import save_reconstructions

    parser = argparse.ArgumentParser(description=reconstruct_main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_chips", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, processor = load_pretraining_model(args.model_name_or_path)
    for path in save_reconstructions(model, processor, args.data_dir, args.output_dir, args.num_chips, args.seed):
        print(f"wrote {path}")
    return 0


@user_errors
def evaluate_main(argv: list[str] | None = None) -> int:
    """Masked reconstruction error of a Clay model on a chip set, written to eval_results.json."""
    import json

    from .evaluation import MASKINGS, SPLITS, evaluate_reconstruction, load_pretraining_model, write_eval_results
    from .image_processing_clay import parse_fill_value

    parser = argparse.ArgumentParser(description=evaluate_main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True, help="where eval_results.json goes (e.g. the model folder)")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="validation",
        help="chips of the training run's hash split of --data_dir (default: validation), or all of them",
    )
    parser.add_argument("--validation_fraction", type=float, default=0.2, help="as the training run's (default 0.2)")
    parser.add_argument(
        "--masking",
        choices=MASKINGS,
        default="random",
        help="random: per-chip masks from --seed, every group measured (default, as training's validation); "
        "v0: v0's validation masking (no shuffle), which never masks the last band groups",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masking")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_chips", type=int, help="evaluate exactly this many chips (the first readable ones)")
    parser.add_argument(
        "--fill_value",
        type=parse_fill_value,
        help="use chips with nodata filled ('mean' or a raw value); default: skip them as bad chips",
    )
    args = parser.parse_args(argv)
    model, processor = load_pretraining_model(args.model_name_or_path)
    results = evaluate_reconstruction(
        model, processor, args.data_dir, args.batch_size, masking=args.masking, seed=args.seed,
        max_chips=args.max_chips, split=args.split, validation_fraction=args.validation_fraction,
        fill_value=args.fill_value,
    )  # fmt: skip
    path = write_eval_results(results, args.output_dir)
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


@user_errors
def linear_probe_main(argv: list[str] | None = None) -> int:
    """Linear probe: logistic regression on mean embeddings of labelled chips, accuracy on a fixed split."""
    import json

    from .embeddings import load_encoder
    from .probe import labels_from_csv, labels_from_folders, linear_probe
    from .utils.outputs import write_json

    parser = argparse.ArgumentParser(description=linear_probe_main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", help="chips in class folders: DATA_DIR/<label>/*.tif")
    parser.add_argument("--labels", help="a CSV with 'path' and 'label' columns (instead of class folders)")
    parser.add_argument("--test_size", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not (args.data_dir or args.labels):
        parser.error("give --data_dir (class folders) or --labels (CSV)")
    labels = labels_from_csv(args.labels) if args.labels else labels_from_folders(args.data_dir)
    model, processor = load_encoder(args.model_name_or_path)
    results = linear_probe(model, processor, labels, args.test_size, args.seed)
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)
    return 0


@user_errors
def publish_main(argv: list[str] | None = None) -> int:
    """Assemble, validate and upload a Clay model folder to the Hub (token from HF_TOKEN)."""
    import tempfile

    from .hub import STAGING_MARKER, stage_repository, upload_repository

    parser = argparse.ArgumentParser(description=publish_main.__doc__)
    parser.add_argument("--model_dir", required=True, help="a save_pretrained folder with preprocessor_config.json")
    parser.add_argument("--repo_id", default="made-with-clay/Clay")
    parser.add_argument(
        "--base_model",
        help="fine-tuned models: the Hub id of the pretrained Clay it was fine-tuned from, when clay-finetune "
        "recorded a local folder",
    )
    parser.add_argument(
        "--license",
        help="weights trained from scratch: their licence, a Hub licence id (default apache-2.0; 'other' with "
        "--license_name and --license_link). Converted Clay v0 weights and models trained from them are OpenRAIL-M",
    )
    parser.add_argument("--license_name", help="with --license other: the licence's id, e.g. my-licence-1.0")
    parser.add_argument("--license_link", help="with --license other: a link to the licence text")
    parser.add_argument("--staging_dir", help="where to assemble the repository (default: a temporary folder)")
    parser.add_argument("--dry_run", action="store_true", help="do everything but upload; print what would go where")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="a branch to upload to (created if missing)")
    args = parser.parse_args(argv)
    staging = Path(args.staging_dir) if args.staging_dir else Path(tempfile.mkdtemp(prefix="clay-hub-"))
    try:
        staged = stage_repository(
            args.model_dir,
            staging,
            args.repo_id,
            base_model=args.base_model,
            license=args.license,
            license_name=args.license_name,
            license_link=args.license_link,
        )
    except BaseException:
        if not args.staging_dir:  # the temporary copy of a failed staging is ours to remove
            shutil.rmtree(staging, ignore_errors=True)
        raise
    for note in staged.notes:
        print(f"note: {note}")
    if staged.reused:
        print(f"reused {staged.folder}: a staging folder of an earlier run (it holds {STAGING_MARKER}), emptied first")
    target = f"https://huggingface.co/{args.repo_id}" + (f"/tree/{args.revision}" if args.revision else "")
    for name in staged.files:
        size = (staged.folder / name).stat().st_size
        print(f"{'would upload' if args.dry_run else 'uploading'} {name:<28} {size:>12,} bytes → {target}/{name}")
    print(f"staged repository: {staged.folder}")
    print(f"model card: {staged.folder / 'README.md'}")
    if not args.dry_run:
        print(f"uploaded: {upload_repository(staged, private=args.private, revision=args.revision)}")
        if not args.staging_dir:
            shutil.rmtree(staging, ignore_errors=True)
    return 0


@user_errors
def pretrain_main(argv: list[str] | None = None) -> int:
    """`clay-pretrain`: the pretraining loop (see `clay_hf.training.pretrain`); exit status 0 when it finishes."""
    from .training.pretrain import main

    main(argv)
    return 0


@user_errors
def demo_main(argv: list[str] | None = None) -> int:
    """`clay-demo`: the end-to-end demo on built-in synthetic data (what `make demo` runs)."""
    from .demo import main

    main(argv)
    return 0
