"""Convert an original Clay v0 Lightning checkpoint (`*.ckpt`) into a [`ClayForMaskedImageModeling`]."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..models.clay.configuration_clay import ClayConfig
from ..models.clay.convert_clay_original_checkpoint import (
    CheckpointConversionError,
    conversion_record,
    convert_original_checkpoint,
    save_converted,
)
from ..utils.errors import user_errors
from ._common import parse_arguments


@dataclass(kw_only=True)
class ConvertCheckpointArguments:
    """The arguments of `clay-convert-checkpoint`."""

    checkpoint: str = field(metadata={"help": "the original Lightning .ckpt file"})
    output_dir: str = field(metadata={"help": "where to write the transformers folder"})
    config: str | None = field(
        default=None, metadata={"help": "a config.json to use instead of deriving one from the checkpoint"}
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "encoder heads, for a checkpoint of a custom size"}
    )
    decoder_num_attention_heads: int | None = field(default=None, metadata={"help": "decoder heads, for a custom size"})
    allow_unsafe_pickle: bool = field(
        default=False, metadata={"help": "open with weights_only=False (only for trusted files)"}
    )


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Command line: convert a checkpoint and write a `save_pretrained` folder (config.json, model.safetensors,
    preprocessor_config.json and the conversion record). A user mistake is one line on stderr and exit status 1."""
    args = parse_arguments(ConvertCheckpointArguments, argv, __doc__.splitlines()[0])
    overrides = {
        key: value
        for key, value in (
            ("num_attention_heads", args.num_attention_heads),
            ("decoder_num_attention_heads", args.decoder_num_attention_heads),
        )
        if value is not None
    }
    if not Path(args.checkpoint).is_file():
        raise CheckpointConversionError(f"{args.checkpoint}: no such file.")
    config = _read_config_file(args.config) if args.config else None
    model = convert_original_checkpoint(
        args.checkpoint, config=config, allow_unsafe_pickle=args.allow_unsafe_pickle, **overrides
    )
    output_dir = save_converted(model, args.output_dir, conversion_record(args.checkpoint, model.config))
    print(f"Converted {args.checkpoint} ({model.num_parameters():,} parameters) to {output_dir}")
    return 0


def _read_config_file(path: str) -> ClayConfig:
    try:
        return ClayConfig.from_json_file(path)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointConversionError(f"{path}: not a readable Clay config.json ({error}).") from None


if __name__ == "__main__":
    sys.exit(main())
