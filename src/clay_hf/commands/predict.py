"""`clay-predict`: Predictions of a fine-tuned Clay: class maps as GeoTIFFs on each chip's grid, or chip classes as
GeoParquet."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils.logging import get_logger

from ..data.dataset import resolve_sources
from ..finetuning.data import ChipReader
from ..finetuning.predict import load_finetuned, predict_chips, predict_segmentation
from ..models.clay.modeling_clay_heads import ClayForSemanticSegmentation
from ..utils.errors import user_errors
from ..utils.outputs import OutputLock, make_folder, remove_partials
from ._common import default_device, parse_arguments

logger = get_logger(__name__)


@dataclass(kw_only=True)
class PredictArguments:
    """The arguments of `clay-predict`."""

    model_name_or_path: str = field(metadata={"help": "a scripts/finetune.py output folder"})
    data_dir: str = field(metadata={"help": "chips or scenes: a folder, glob or list file"})
    output_dir: str = field(metadata={"help": "class maps (segmentation) or predictions.parquet"})
    bands: list[str] | None = field(
        default=None, metadata={"help": "names of the files' bands in file order (default: descriptions)"}
    )
    date: str | None = field(default=None, metadata={"help": "YYYY-MM-DD of inputs that carry no date"})
    tile_size: int | None = field(
        default=None, metadata={"help": "segmentation tile side (default: the config's image size)"}
    )
    overlap: int | None = field(
        default=None, metadata={"help": "pixels shared by neighbouring tiles (default: a quarter tile)"}
    )
    batch_size: int = 4
    device: str = field(default_factory=default_device)
    resume: bool = field(default=False, metadata={"help": "skip inputs whose class map already exists"})


def run(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_arguments(PredictArguments, argv, "Predict with a fine-tuned Clay: class maps or chip classes.")
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
