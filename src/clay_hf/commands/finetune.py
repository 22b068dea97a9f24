"""`clay-finetune`: Fine-tune Clay with `transformers.Trainer`: semantic segmentation, chip classification or chip
regression."""

from __future__ import annotations

import logging
import sys
from typing import Any

from transformers import TrainingArguments

from ..finetuning.train import FineTuningArguments, finetune
from ..utils.errors import user_errors
from ._common import CommandParser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = CommandParser((FineTuningArguments, TrainingArguments), description=__doc__)
    args, training_args = parser.parse(argv)
    return finetune(args, training_args)


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Console entry point: exit status 0 when the run completes (`run` returns the results); a user error is one
    `error: …` line and status 1."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
