"""Convert an original Clay v0 Lightning checkpoint (`*.ckpt`) into a [`ClayForMaskedImageModeling`].

The folder is written under the fault contract of `clay_hf.utils.outputs`: staged aside and swapped into place
whole (an earlier conversion there is replaced only once the new one is complete), with `checksums.sha256`, under
`OUTPUT_DIR.lock` (one run per folder). A folder holding anything else (the checkpoint itself, notes) is refused,
naming what it holds: replacing it would delete them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.clay.configuration_clay import ClayConfig
from ..models.clay.convert_clay_original_checkpoint import (
    CONVERSION_RECORD_NAME,
    CheckpointConversionError,
    conversion_record,
    convert_original_checkpoint,
    save_converted,
)
from ..models.clay.modeling_clay import ClayForMaskedImageModeling
from ..utils.errors import user_errors
from ..utils.outputs import CHECKSUMS_NAME, OutputLock, atomic_folder, foreign_contents, write_checksums
from ._common import parse_arguments

#: What a conversion writes (save_pretrained's weights whole or in shards, the processor, the record, the checksums):
#: the only files a folder may hold for a conversion to replace it.
CONVERTED_FILES = (
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    CONVERSION_RECORD_NAME,
    CHECKSUMS_NAME,
)


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
    preprocessor_config.json, the conversion record and checksums.sha256). A user mistake, a full disk or a locked
    output is one line on stderr and exit status 1."""
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
    output_dir = Path(args.output_dir)
    _check_output_dir(output_dir, Path(args.checkpoint))
    with OutputLock(output_dir):  # one run per folder, taken before the conversion: a second run stops at once
        model = convert_original_checkpoint(
            args.checkpoint, config=config, allow_unsafe_pickle=args.allow_unsafe_pickle, **overrides
        )
        write_converted(model, output_dir, conversion_record(args.checkpoint, model.config))
    print(f"Converted {args.checkpoint} ({model.num_parameters():,} parameters) to {output_dir}")
    return 0


def write_converted(model: ClayForMaskedImageModeling, output_dir: Path, record: dict[str, Any]) -> Path:
    """[`save_converted`] into a staging folder beside `output_dir`, with `checksums.sha256` (which `publish.py`
    checks), swapped into place whole: a full disk is an OutputError naming `output_dir`, and leaves nothing."""
    with atomic_folder(os.path.abspath(output_dir)) as staging:
        save_converted(model, staging, record)
        write_checksums(staging)
    return output_dir


def _check_output_dir(output_dir: Path, checkpoint: Path) -> None:
    """Refuse a folder that holds anything but an earlier conversion (files `CONVERTED_FILES` matches, with its
    record): the new one replaces the folder whole. Refuse a checkpoint inside it too, which that would delete."""
    if output_dir.resolve() in checkpoint.resolve().parents:
        raise CheckpointConversionError(
            f"--checkpoint {checkpoint} is inside --output_dir {output_dir}, which the converted folder replaces "
            "whole: choose an --output_dir that does not hold the checkpoint."
        )
    foreign = foreign_contents(output_dir, own=CONVERTED_FILES)
    if foreign:
        raise CheckpointConversionError(
            f"--output_dir {output_dir} holds {', '.join(foreign)}, which this conversion does not write: the "
            "converted folder replaces it whole. Choose a new or empty folder."
        )
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / CONVERSION_RECORD_NAME).is_file():
        raise CheckpointConversionError(
            f"--output_dir {output_dir} is not empty and holds no earlier conversion ({CONVERSION_RECORD_NAME}): "
            "the converted folder replaces it whole. Choose a new or empty folder."
        )


def _read_config_file(path: str) -> ClayConfig:
    try:
        return ClayConfig.from_json_file(path)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointConversionError(f"{path}: not a readable Clay config.json ({error}).") from None


if __name__ == "__main__":
    sys.exit(main())
