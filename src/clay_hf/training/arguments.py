"""Arguments of `scripts/pretrain.py` as dataclasses (parsed by `clay_hf.commands.pretrain` with `HfArgumentParser`,
as transformers' `run_mae.py` parses its own).

Three groups, each handed to the part of pretraining that reads it: [`ModelArguments`] builds the model,
[`DataArguments`] the chips and loaders, [`PretrainingArguments`] the optimisation and the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..models.clay.image_processing_clay import parse_fill_value
from ..utils.errors import ClayUserError
from ..utils.memory import GLIBC_DEFAULT_MMAP_THRESHOLD


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelArguments:
    """Which model to train, from scratch or from weights."""

    _argument_group_name = "model"

    config_name: str = field(default="small", metadata=_help("tiny, small (v0), medium, large, or a config.json"))
    model_name_or_path: str | None = field(
        default=None, metadata=_help("continue from these weights (a folder or Hub id)")
    )
    image_size: int | None = field(default=None, metadata=_help("override the config's image size"))
    patch_size: int | None = field(default=None, metadata=_help("override the config's patch size"))
    mask_ratio: float | None = field(default=None, metadata=_help("override the config's mask ratio (v0: 0.75)"))
    attn_implementation: str = field(default="sdpa", metadata=_help("sdpa, eager, flash_attention_2, …"))
    gradient_checkpointing: bool = field(default=False, metadata=_help("recompute activations in the backward pass"))
    torch_compile: bool = field(default=False, metadata=_help("compile the model with torch.compile"))

    def config_overrides(self) -> dict[str, int | float]:
        """The config values given on the command line."""
        overrides = {"image_size": self.image_size, "patch_size": self.patch_size, "mask_ratio": self.mask_ratio}
        return {key: value for key, value in overrides.items() if value is not None}


@dataclass
class DataArguments:
    """Where the chips are, how they are split, read and filled."""

    _argument_group_name = "data"

    train_dir: str = field(metadata=_help("chips: a folder, glob, list file or list of URLs"))
    validation_dir: str | None = field(
        default=None, metadata=_help("validation chips; default: the deterministic hash split of --train_dir")
    )
    validation_fraction: float = field(default=0.2, metadata=_help("share of --train_dir for validation"))
    dataloader_num_workers: int = field(default=0, metadata=_help("DataLoader worker processes per rank"))
    shuffle_buffer_size: int = field(
        default=1,
        metadata=_help(
            "examples in the shuffle buffer (besides shuffling shard order every epoch); 1 keeps resume exact"
        ),
    )
    max_eval_chips: int | None = field(default=None, metadata=_help("cap on validation chips per evaluation"))
    bands: list[str] | None = field(
        default=None,
        metadata=_help(
            "the chips' band names in the chips' order (default: their band descriptions, else the 13 v0 bands)"
        ),
    )
    fill_value: float | str | None = field(
        default=None,
        metadata={
            "help": "train on chips with nodata/NaN pixels filled ('mean' or a raw value); by default they are skipped",
            "type": parse_fill_value,
        },
    )


@dataclass
class PretrainingArguments:
    """The optimisation (defaults: the v0 recipe) and the run: output, length, checkpoints, logging."""

    _argument_group_name = "optimisation and run (defaults: the v0 recipe)"

    output_dir: str = field(metadata=_help("where the model, checkpoints and training_summary.json go"))
    per_device_train_batch_size: int = 10
    per_device_eval_batch_size: int | None = field(default=None, metadata=_help("default: the training batch size"))
    gradient_accumulation_steps: int = 5
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    lr_scheduler: Literal["cosine_warm_restarts", "cosine_with_warmup"] = field(
        default="cosine_warm_restarts",
        metadata=_help("v0: CosineAnnealingWarmRestarts(T_0, T_mult, eta_min) stepped per optimizer step"),
    )
    restart_period: int = field(default=1000, metadata=_help("T_0 of the warm restarts"))
    restart_mult: int = field(default=2, metadata=_help("T_mult of the warm restarts"))
    eta_min_factor: float = field(
        default=10.0,
        metadata=_help("eta_min = factor × lr. v0 used 10, so the lr rises from lr to 10×lr within each period"),
    )
    num_warmup_steps: int = field(default=0, metadata=_help("for cosine_with_warmup"))
    max_grad_norm: float | None = field(default=None, metadata=_help("clip gradients (v0: none)"))
    max_consecutive_nonfinite: int = field(default=10, metadata=_help("stop after this many bad steps in a row"))
    num_train_epochs: int = field(
        default=25,
        metadata=_help(
            "passes over the training chips: every chip once per epoch (an epoch's last, partial accumulation "
            "window is stepped)"
        ),
    )
    max_train_steps: int | None = field(default=None, metadata=_help("optimizer steps; overrides epochs"))
    checkpointing_steps: int | None = field(default=None, metadata=_help("save a resumable state every N steps"))
    checkpoints_total_limit: int = field(
        default=3,
        metadata=_help(
            "keep the newest K checkpoints (and K pretrained-N folders of --save_every_checkpoint_as_pretrained)"
        ),
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata=_help(
            "a checkpoint folder, or 'latest'; the number of processes, --dataloader_num_workers, "
            "--shuffle_buffer_size, --seed and the training chips must be those of the checkpoint"
        ),
    )
    eval_steps: int | None = field(default=None, metadata=_help("validate every N steps (and at the end)"))
    logging_steps: int = 10
    seed: int = 42
    cpu_malloc_mmap_threshold: int = field(
        default=GLIBC_DEFAULT_MMAP_THRESHOLD,
        metadata=_help(
            "on CPU, glibc serves allocations of this many bytes or more with mmap, so freed activations return to "
            "the OS (peak ~0.6 GiB lower at batch 4 of small; steps 0-20%% slower in our runs, from page faults); "
            "0 keeps glibc's dynamic threshold"
        ),
    )
    report_to: str = field(default="tensorboard", metadata=_help("tensorboard, wandb, all, or none"))
    save_every_checkpoint_as_pretrained: bool = field(
        default=False, metadata=_help("also write a save_pretrained folder beside each checkpoint")
    )
    rank_timeout: float = field(
        default=1800.0,
        metadata=_help(
            "seconds a rank waits for the others (a dead machine) before the run ends naming the missing ranks; a "
            "rank that has finished nothing for a while says so"
        ),
    )
    log_seen_chips: bool = field(
        default=False, metadata=_help("write 'epoch<TAB>chip' lines of what each rank trained on")
    )

    def __post_init__(self) -> None:
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.max_train_steps is None and self.num_train_epochs < 1:
            raise ClayUserError("give --max_train_steps or a positive --num_train_epochs")
