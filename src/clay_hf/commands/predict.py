"""`clay-predict`: Predictions of a fine-tuned Clay: class maps as GeoTIFFs on each chip's grid, or chip classes as
GeoParquet."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from transformers.utils.logging import get_logger

from ..data.dataset import resolve_sources
from ..finetuning.data import ChipReader
from ..finetuning.predict import load_finetuned, predict_chips, predict_segmentation
from ..models.clay.modeling_clay_heads import ClayForSemanticSegmentation
from ..utils.errors import user_errors
from ..utils.outputs import OutputLock, make_folder, remove_partials

logger = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predict with a fine-tuned Clay: class maps or chip classes.")
    parser.add_argument("--model_name_or_path", required=True, help="a scripts/finetune.py output folder")
    parser.add_argument("--data_dir", required=True, help="chips or scenes: a folder, glob or list file")
    parser.add_argument("--output_dir", required=True, help="class maps (segmentation) or predictions.parquet")
    parser.add_argument("--bands", nargs="+", help="names of the files' bands in file order (default: descriptions)")
    parser.add_argument("--date", help="YYYY-MM-DD of inputs that carry no date")
    parser.add_argument("--tile_size", type=int, help="segmentation tile side (default: the config's image size)")
    parser.add_argument("--overlap", type=int, help="pixels shared by neighbouring tiles (default: a quarter tile)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", action="store_true", help="skip inputs whose class map already exists")
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    with OutputLock(args.output_dir):  # one writer per output folder; a killed run's partial files go first
        remove_partials(make_folder(args.output_dir), recursive=True)
        model, processor = load_finetuned(args.model_name_or_path, args.device)
        bands = list(model.config.band_names)
        reader = ChipReader(bands, processor.band_statistics(bands)[0], args.bands, args.date)
        paths = resolve_sources(args.data_dir)
        if isinstance(model, ClayForSemanticSegmentation):
            summary = predict_segmentation(
                model, processor, paths, args.output_dir, reader, args.tile_size, args.overlap, args.batch_size,
                args.resume, root=args.data_dir,
            )  # fmt: skip
        else:
            summary = predict_chips(model, processor, paths, Path(args.output_dir) / "predictions.parquet", reader)
    logger.info("wrote %d files; %d bad inputs skipped", len(summary["written"]), len(summary["bad_chips"]))
    return summary


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Console entry point: exit status 0 when the run completes (`run` returns the results); a user error (a full
    disk, a locked output, inputs that would share a map) is one `error: …` line and exit status 1."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
