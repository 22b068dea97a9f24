"""Pretraining Clay with Accelerate (`scripts/pretrain.py`)."""

from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .checkpointing import list_checkpoints, resolve_checkpoint
from .pretrain import NonFiniteLossError, Pretrainer, TrainState, build_scheduler, evaluate, pretrain

__all__ = [
    "DataArguments",
    "ModelArguments",
    "NonFiniteLossError",
    "Pretrainer",
    "PretrainingArguments",
    "TrainState",
    "build_scheduler",
    "evaluate",
    "list_checkpoints",
    "pretrain",
    "resolve_checkpoint",
]
