"""Command-line arguments of `scripts/pretrain.py`, in the style of the transformers example scripts."""

from __future__ import annotations

import argparse

from ..models.clay.image_processing_clay import parse_fill_value
from ..utils.errors import ClayUserError
from ..utils.memory import GLIBC_DEFAULT_MMAP_THRESHOLD


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain Clay v0 (masked autoencoder) with Accelerate: `accelerate launch scripts/pretrain.py …`."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train_dir", required=True, help="chips: a folder, glob, list file or list of URLs")
    data.add_argument("--validation_dir", help="validation chips; default: the deterministic hash split of --train_dir")
    data.add_argument("--validation_fraction", type=float, default=0.2, help="share of --train_dir for validation")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument(
        "--shuffle_buffer_size",
        type=int,
        default=1,
        help="examples in the shuffle buffer (besides shuffling shard order every epoch); 1 keeps resume exact",
    )
    data.add_argument("--max_eval_chips", type=int, default=None, help="cap on validation chips per evaluation")
    data.add_argument(
        "--bands",
        nargs="+",
        help="the chips' band names in the chips' order (default: their band descriptions, else the 13 v0 bands)",
    )
    data.add_argument(
        "--fill_value",
        type=parse_fill_value,
        help="train on chips with nodata/NaN pixels filled ('mean' or a raw value); by default they are skipped",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--config_name", default="small", help="tiny, small (v0), medium, large, or a config.json")
    model.add_argument("--model_name_or_path", help="continue from these weights (a folder or Hub id)")
    model.add_argument("--image_size", type=int, help="override the config's image size")
    model.add_argument("--patch_size", type=int, help="override the config's patch size")
    model.add_argument("--mask_ratio", type=float, help="override the config's mask ratio (v0: 0.75)")
    model.add_argument("--attn_implementation", default="sdpa", help="sdpa, eager, flash_attention_2, …")
    model.add_argument("--gradient_checkpointing", action="store_true")
    model.add_argument("--torch_compile", action="store_true")

    optim = parser.add_argument_group("optimisation (defaults: the v0 recipe)")
    optim.add_argument("--per_device_train_batch_size", type=int, default=10)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=None)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=5)
    optim.add_argument("--learning_rate", type=float, default=1e-4)
    optim.add_argument("--weight_decay", type=float, default=0.05)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.95)
    optim.add_argument(
        "--lr_scheduler",
        choices=["cosine_warm_restarts", "cosine_with_warmup"],
        default="cosine_warm_restarts",
        help="v0: CosineAnnealingWarmRestarts(T_0, T_mult, eta_min) stepped per optimizer step",
    )
    optim.add_argument("--restart_period", type=int, default=1000, help="T_0 of the warm restarts")
    optim.add_argument("--restart_mult", type=int, default=2, help="T_mult of the warm restarts")
    optim.add_argument(
        "--eta_min_factor",
        type=float,
        default=10.0,
        help="eta_min = factor × lr. v0 used 10, so the lr rises from lr to 10×lr within each period",
    )
    optim.add_argument("--num_warmup_steps", type=int, default=0, help="for cosine_with_warmup")
    optim.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients (v0: none)")
    optim.add_argument("--max_consecutive_nonfinite", type=int, default=10, help="stop after this many bad steps")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument(
        "--num_train_epochs",
        type=int,
        default=25,
        help="passes over the training chips: every chip once per epoch (an epoch's last, partial accumulation "
        "window is stepped)",
    )
    run.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides epochs")
    run.add_argument("--checkpointing_steps", type=int, default=None, help="save a resumable state every N steps")
    run.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=3,
        help="keep the newest K checkpoints (and K pretrained-N folders of --save_every_checkpoint_as_pretrained)",
    )
    run.add_argument(
        "--resume_from_checkpoint",
        help="a checkpoint folder, or 'latest'; the number of processes, --dataloader_num_workers, "
        "--shuffle_buffer_size, --seed and the training chips must be those of the checkpoint",
    )
    run.add_argument("--eval_steps", type=int, default=None, help="validate every N steps (and at the end)")
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument(
        "--cpu_malloc_mmap_threshold",
        type=int,
        default=GLIBC_DEFAULT_MMAP_THRESHOLD,
        help="on CPU, glibc serves allocations of this many bytes or more with mmap, so freed activations return "
        "to the OS (peak ~0.6 GiB lower at batch 4 of small; steps 0-20%% slower in our runs, from page faults); "
        "0 keeps glibc's dynamic threshold",
    )
    run.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all, or none")
    run.add_argument(
        "--save_every_checkpoint_as_pretrained",
        action="store_true",
        help="also write a save_pretrained folder beside each checkpoint",
    )
    run.add_argument(
        "--log_seen_chips", action="store_true", help="write 'epoch<TAB>chip' lines of what each rank trained on"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.per_device_eval_batch_size is None:
        args.per_device_eval_batch_size = args.per_device_train_batch_size
    if args.max_train_steps is None and args.num_train_epochs < 1:
        raise ClayUserError("give --max_train_steps or a positive --num_train_epochs")
    return args
