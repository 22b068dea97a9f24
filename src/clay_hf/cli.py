"""Command-line entry points for the data tools (`scripts/*.py` and the `clay-*` console scripts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data.chips import ChipError
from .data.dataset import resolve_sources
from .data.shards import DEFAULT_CODEC, pack_shards
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
    parser.add_argument("--resume", action="store_true", help="keep complete shards and pack only the chips they lack")
    args = parser.parse_args(argv)
    shards, bad = pack_webdataset(
        resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix, resume=args.resume
    )
    for error in bad:
        print(f"skipped {error}")
    print(f"wrote {len(shards)} shards to {args.output_dir}, skipped {len(bad)} bad chips")
    return 0


def pack_shards_main(argv: list[str] | None = None) -> int:
    """Pack GeoTIFF chips into Clay shards (`*.clayshard`), the lossless training format that reads fastest."""
    parser = argparse.ArgumentParser(description=pack_shards_main.__doc__)
    parser.add_argument("source", help="chips: a folder, glob, list file or URL")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chips_per_shard", type=int, default=256)
    parser.add_argument("--prefix", default="chips")
    parser.add_argument("--codec", default=DEFAULT_CODEC, help="zstd[:LEVEL], lz4[:LEVEL] or none")
    parser.add_argument("--num_workers", type=int, default=0, help="processes packing shards in parallel")
    parser.add_argument("--overwrite", action="store_true", help="rewrite shards already in --output_dir")
    args = parser.parse_args(argv)
    try:
        report = pack_shards(
            resolve_sources(args.source), args.output_dir, args.chips_per_shard, args.prefix, args.codec,
            args.num_workers, args.overwrite,
        )  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    for message in report.bad:
        print(f"skipped {message}")
    print(
        f"{len(report.shards)} shards in {args.output_dir} hold {report.chips} chips; skipped {len(report.bad)} bad chips"
    )
    return 0


def embed_main(argv: list[str] | None = None) -> int:
    """Embed GeoTIFF chips with a Clay encoder and write GeoParquet (v0 format)."""
    import torch

    from .embeddings import LEVELS, embed_to_geoparquet, load_encoder
    from .image_processing_clay import parse_fill_value

    parser = argparse.ArgumentParser(description=embed_main.__doc__)
    parser.add_argument("--model_name_or_path", required=True, help="a save_pretrained folder or a Hub id")
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
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--rows_per_part", type=int, default=1024, help="rows per durable part file")
    parser.add_argument("--resume", action="store_true", help="keep finished parts and skip their chips")
    args = parser.parse_args(argv)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.image_size and len(args.image_size) > 2:
        parser.error("--image_size takes a side, or a height and a width")
    image_size = tuple(args.image_size) if args.image_size else None
    model, processor = load_encoder(args.model_name_or_path, args.device)
    run = embed_to_geoparquet(
        model, processor, args.data_dir, args.output, level=args.level, bands=args.bands, batch_size=args.batch_size,
        dtype=dtype, num_workers=args.num_workers, rows_per_part=args.rows_per_part, resume=args.resume,
        fill_value=args.fill_value, image_size=image_size,
    )  # fmt: skip
    print(
        f"wrote {run.output}: {run.embedded} chips embedded ({run.skipped_done} already done, "
        f"{run.bad_chips} bad chips skipped), embeddings of shape {run.shape}"
    )
    return 0


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


def evaluate_main(argv: list[str] | None = None) -> int:
    """Masked reconstruction error of a Clay model on a chip set, written to eval_results.json."""
    import json

    from .evaluation import evaluate_reconstruction, load_pretraining_model, write_eval_results
    from .image_processing_clay import parse_fill_value

    parser = argparse.ArgumentParser(description=evaluate_main.__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True, help="where eval_results.json goes (e.g. the model folder)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, help="mask randomly with this seed; default: v0 validation masking")
    parser.add_argument("--max_chips", type=int)
    parser.add_argument(
        "--fill_value",
        type=parse_fill_value,
        help="use chips with nodata filled ('mean' or a raw value); default: skip",
    )
    args = parser.parse_args(argv)
    model, processor = load_pretraining_model(args.model_name_or_path)
    results = evaluate_reconstruction(
        model, processor, args.data_dir, args.batch_size, args.seed, args.max_chips, fill_value=args.fill_value
    )
    path = write_eval_results(results, args.output_dir)
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


def linear_probe_main(argv: list[str] | None = None) -> int:
    """Linear probe: logistic regression on mean embeddings of labelled chips, accuracy on a fixed split."""
    import json

    from .embeddings import load_encoder
    from .probe import labels_from_csv, labels_from_folders, linear_probe

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
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


def publish_main(argv: list[str] | None = None) -> int:
    """Assemble, validate and upload a Clay model folder to the Hub (token from HF_TOKEN)."""
    import tempfile

    from .hub import stage_repository, upload_repository

    parser = argparse.ArgumentParser(description=publish_main.__doc__)
    parser.add_argument("--model_dir", required=True, help="a save_pretrained folder with preprocessor_config.json")
    parser.add_argument("--repo_id", default="made-with-clay/Clay")
    parser.add_argument("--staging_dir", help="where to assemble the repository (default: a temporary folder)")
    parser.add_argument("--dry_run", action="store_true", help="do everything but upload; print what would go where")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="a branch to upload to (created if missing)")
    args = parser.parse_args(argv)
    staging = Path(args.staging_dir) if args.staging_dir else Path(tempfile.mkdtemp(prefix="clay-hub-"))
    staged = stage_repository(args.model_dir, staging, args.repo_id)
    target = f"https://huggingface.co/{args.repo_id}" + (f"/tree/{args.revision}" if args.revision else "")
    for name in staged.files:
        size = (staged.folder / name).stat().st_size
        print(f"{'would upload' if args.dry_run else 'uploading'} {name:<28} {size:>12,} bytes → {target}/{name}")
    print(f"staged repository: {staged.folder}")
    print(f"model card: {staged.folder / 'README.md'}")
    if not args.dry_run:
        print(f"uploaded: {upload_repository(staged, private=args.private, revision=args.revision)}")
    return 0
