"""`clay-embed`: Embed GeoTIFF chips with a Clay encoder and write GeoParquet (v0 format); under `accelerate launch`,
every process embeds its own share."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..inference.embeddings import EMBEDDINGS_DTYPES, LEVELS, EmbeddingJob, EmbeddingOptions, EmbeddingRun, load_encoder
from ..inference.ranks import RANK_TIMEOUT_SECONDS, Rank, current_rank
from ..models.clay.image_processing_clay import parse_fill_value
from ..utils.errors import user_errors
from ._common import CommandParser, default_device

#: `--dtype`: PyTorch's autocast precision (fp32: none).
AUTOCAST_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(kw_only=True)
class EmbedArguments:
    """The flags of `clay-embed`: the model, the chips, the output and the [`EmbeddingOptions`] of the run."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "a save_pretrained folder or a Hub id"})
    onnx: str | None = field(
        default=None, metadata={"help": "an encoder exported by export_onnx.py, run by ONNX Runtime (CPU)"}
    )
    data_dir: str = field(metadata={"help": "chips: a folder, glob, list file or URL"})
    output: str = field(metadata={"help": "the GeoParquet file to write"})
    level: str = field(
        default="mean", metadata={"help": "mean (D), patch (h·w·D) or group (G·h·w·D)", "choices": LEVELS}
    )
    bands: list[str] | None = field(
        default=None,
        metadata={
            "help": "the chips' band names in the chips' order (default: each chip's band descriptions, else the 13 "
            "v0 bands); the model picks its bands from them by name"
        },
    )
    fill_value: float | str | None = field(
        default=None,
        metadata={
            "help": "embed chips with nodata/NaN pixels, filled with 'mean' (the band mean) or a raw value; by "
            "default such chips are skipped and reported",
            "type": parse_fill_value,
        },
    )
    image_size: list[int] | None = field(
        default=None,
        metadata={
            "help": "chip side (or height width) in pixels, multiples of the patch size (default: the model's)",
            "metavar": "SIZE",
        },
    )
    batch_size: int = 8
    device: str = field(default_factory=default_device)
    dtype: str = field(default="fp32", metadata={"help": "autocast precision", "choices": AUTOCAST_DTYPES})
    embeddings_dtype: str = field(
        default="float32", metadata={"help": "stored values (float16: half)", "choices": list(EMBEDDINGS_DTYPES)}
    )
    reconstruction_error: bool = field(
        default=False,
        metadata={
            "help": "also store each chip's masked reconstruction error (needs a pretraining model, with its decoder)"
        },
    )
    num_workers: int = 0
    rows_per_part: int = field(default=1024, metadata={"help": "rows per durable part file"})
    resume: bool = field(default=False, metadata={"help": "keep finished parts and skip their chips"})
    rank_timeout: float = field(
        default=RANK_TIMEOUT_SECONDS,
        metadata={"help": "under accelerate launch: give up on ranks that show no sign of life for this many seconds"},
    )

    def problem(self) -> str | None:
        """What is wrong with these flags together (a parser error), or None."""
        if (self.model_name_or_path is None) == (self.onnx is None):
            return "give --model_name_or_path or --onnx (one of them)"
        if self.onnx and self.dtype != "fp32":
            return "--dtype is PyTorch's autocast; an ONNX encoder runs as exported (float32)"
        if self.onnx and self.reconstruction_error:
            return "--reconstruction_error needs the PyTorch pretraining model (--model_name_or_path)"
        if self.image_size and len(self.image_size) > 2:
            return "--image_size takes a side, or a height and a width"
        return None

    def embedding_options(self) -> EmbeddingOptions:
        """The options of [`embed_to_geoparquet`] these flags ask for."""
        import torch

        return EmbeddingOptions(
            level=self.level,
            bands=self.bands,
            batch_size=self.batch_size,
            dtype={"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype],
            num_workers=self.num_workers,
            rows_per_part=self.rows_per_part,
            resume=self.resume,
            fill_value=self.fill_value,
            image_size=tuple(self.image_size) if self.image_size else None,
            embeddings_dtype=self.embeddings_dtype,
            rank_timeout=self.rank_timeout,
        )


def parse_arguments(argv: list[str] | None = None) -> EmbedArguments:
    """The flags of `argv` (default: the command line); a wrong flag or combination is a parser error (status 2)."""
    parser = CommandParser(EmbedArguments, description=main.__doc__)
    (args,) = parser.parse(argv)
    if (problem := args.problem()) is not None:
        parser.error(problem)
    return args


def embed(args: EmbedArguments, rank: Rank) -> EmbeddingRun:
    """Load the model the flags name and embed this rank's share of the chips."""
    from ..evaluation.reconstruction import load_pretraining_model

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
    job = EmbeddingJob(model, processor, args.output, args.embedding_options(), rank, reconstruction)
    return job.run(args.data_dir)


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Embed GeoTIFF chips with a Clay encoder and write GeoParquet (v0 format); under `accelerate launch`, every
    process embeds its own share."""
    args = parse_arguments(argv)
    rank = current_rank(args.device)
    run = embed(args, rank)
    if rank.is_main:
        print(
            f"wrote {run.output}: {run.embedded} chips embedded ({run.skipped_done} already done, "
            f"{run.bad_chips} bad chips skipped), embeddings of shape {run.shape}; {run.throughput}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
