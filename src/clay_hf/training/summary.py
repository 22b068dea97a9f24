"""What a pretraining run leaves behind for people: `training_summary.json` (the model card reads it), the
tracker's hyperparameters, and the `save_pretrained` folders the summary travels in."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from ..evaluation.reconstruction import VALIDATION_MASKING_SEED, masking_description
from ..models.clay.image_processing_clay import ClayImageProcessor
from ..utils.benchmarking import machine_description
from ..utils.model_source import model_reference
from ..utils.outputs import model_folder, write_json
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .checkpointing import TrainState

if TYPE_CHECKING:
    from ..models.clay.modeling_clay import ClayForMaskedImageModeling

SUMMARY_NAME = "training_summary.json"

#: The arguments that make up the recipe a summary records.
RECIPE = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "lr_scheduler",
    "eta_min_factor",
    "seed",
)


def training_recipe(args: PretrainingArguments) -> dict[str, Any]:
    """The run's recipe ([`RECIPE`]): recorded in the summary, and checked when a checkpoint is resumed."""
    return {key: getattr(args, key) for key in RECIPE}


def hardware_description(accelerator: Accelerator) -> dict[str, Any]:
    """The machine, the number of processes and the mixed precision of a run."""
    return {
        **machine_description(accelerator.device),
        "num_processes": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
    }


def training_summary(
    state: TrainState,
    args: PretrainingArguments,
    model_args: ModelArguments,
    accelerator: Accelerator,
    model: ClayForMaskedImageModeling,
    logged: list[float],
) -> dict[str, Any]:
    """`training_summary.json`: what the run did (`state`, the `logged` losses), on what, with which recipe."""
    return {
        "run_id": state.run_id,
        "global_step": state.global_step,
        "epochs_completed": state.epoch,
        "partial_accumulation_windows_stepped": state.partial_windows,
        "windows_without_chips_dropped": state.empty_windows,
        "chips_seen": state.chips_seen,
        "bad_chips_skipped": state.bad_chips,
        "nonfinite_steps_skipped": state.nonfinite_steps,
        "final_train_loss": state.train_loss,
        "train_loss_history": logged,
        "final_validation_loss": state.validation_loss,
        "final_validation_group_losses": state.validation_group_losses,
        "validation_masking": masking_description("random", VALIDATION_MASKING_SEED),
        "wall_time_seconds": round(state.wall_time, 2),
        "hardware": hardware_description(accelerator),
        "num_parameters": model.num_parameters(),
        "hyperparameters": training_recipe(args),
        "effective_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * accelerator.num_processes,
        "mask_ratio": model.config.mask_ratio,
        # None: random weights (the published licence follows this)
        "initialised_from": model_reference(model_args.model_name_or_path),
    }


def tracker_config(model_args: ModelArguments, data_args: DataArguments, args: PretrainingArguments) -> dict[str, Any]:
    """Tracker hyperparameters: only plain values (TensorBoard's hparams accept no None or lists)."""
    values = {**asdict(model_args), **asdict(data_args), **asdict(args)}
    return {key: value for key, value in values.items() if isinstance(value, (int, float, str, bool))}


def save_pretrained_folder(
    accelerator: Accelerator,
    model: torch.nn.Module,
    processor: ClayImageProcessor,
    folder: Path,
    summary: dict,
    shared: bool = False,
) -> None:
    """A `save_pretrained` folder: model, processor, the training summary the model card reads and their
    `checksums.sha256`, written atomically: the whole folder, or each file when the folder is `shared` with other
    outputs (the run's own folder, beside its checkpoints; the summary goes last)."""
    if accelerator.is_main_process:
        with model_folder(folder, SUMMARY_NAME, shared) as staging:
            accelerator.unwrap_model(model).save_pretrained(staging, safe_serialization=True)
            processor.save_pretrained(staging)
            write_json(staging / SUMMARY_NAME, summary)
    accelerator.wait_for_everyone()


__all__ = [
    "SUMMARY_NAME",
    "hardware_description",
    "save_pretrained_folder",
    "tracker_config",
    "training_recipe",
    "training_summary",
]
