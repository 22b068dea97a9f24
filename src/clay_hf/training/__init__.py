"""Pretraining Clay with Accelerate (`scripts/pretrain.py`)."""

from .arguments import DataArguments, ModelArguments, PretrainingArguments, build_parser, parse_args
from .checkpointing import list_checkpoints, resolve_checkpoint
from .pretrain import NonFiniteLossError, Pretrainer, TrainState, build_scheduler, evaluate, pretrain

__all__ = [
    "DataArguments",
    "ModelArguments",
    "NonFiniteLossError",
    "Pretrainer",
    "PretrainingArguments",
    "TrainState",
    "build_parser",
    "build_scheduler",
    "evaluate",
    "list_checkpoints",
    "parse_args",
    "pretrain",
    "resolve_checkpoint",
]
