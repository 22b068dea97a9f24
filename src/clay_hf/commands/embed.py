"""`clay-embed`: Embed GeoTIFF chips with a Clay encoder and write GeoParquet (v0 format); under `accelerate launch`,
every process embeds its own share."""

from __future__ import annotations

import argparse
import sys

from ..utils.errors import user_errors


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Embed GeoTIFF chips with a Clay encoder and write GeoParquet (v0 format); under `accelerate launch`, every
    process embeds its own share."""
    import torch

    from ..evaluation.reconstruction import load_pretraining_model
    from ..inference.embeddings import EMBEDDINGS_DTYPES, LEVELS, embed_to_geoparquet, load_encoder
    from ..inference.ranks import RANK_TIMEOUT_SECONDS, current_rank
    from ..models.clay.image_processing_clay import parse_fill_value

    parser = argparse.ArgumentParser(description=main.__doc__)
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
        from ..export import OnnxEncoder

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
        from ..data.sources import NoUsableChipsError

        raise NoUsableChipsError(
            f"no chip of {args.data_dir} could be embedded: all {run.bad_chips} were bad (the warnings above name "
            f"each and say why); {run.output} holds no rows"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
