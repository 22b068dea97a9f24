"""`clay-pretrain`: the pretraining loop (see `clay_hf.training.pretrain`); exit status 0 when it finishes."""

from __future__ import annotations

import logging
import sys
from typing import Any

from ..training.arguments import DataArguments, ModelArguments, PretrainingArguments
from ..training.pretrain import pretrain
from ..utils.errors import user_errors
from ._common import CommandParser


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    """The model, data and pretraining arguments of a command line (default: the process's arguments)."""
    parser = CommandParser(
        (ModelArguments, DataArguments, PretrainingArguments),
        description="Pretrain Clay v0 (masked autoencoder) with Accelerate: `accelerate launch scripts/pretrain.py …`.",
    )
    return parser.parse(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """The pretraining script: its progress at INFO (the library itself configures no logging)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("clay_hf").setLevel(logging.INFO)
    return pretrain(*parse_args(argv))


@user_errors
def main(argv: list[str] | None = None) -> int:
    """`clay-pretrain`: the pretraining loop (see `clay_hf.training.pretrain`); exit status 0 when it finishes."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
