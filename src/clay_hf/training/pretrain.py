"""The Clay v0 pretraining loop on Accelerate: one laptop core, 4 GPUs, or several machines, the same code.

Each rank reads its own shards of chips (no rank-0 dispatch); pixels travel as compact tensors and are
normalised on the device. Checkpoints are atomic and verified, and resume the same run: step count, schedule, RNG
and the data stream where it stopped (with the batch a finished rank pads with). One run writes an output folder
at a time (its main process holds `OUTPUT_DIR.lock`); the final model, processor and summary are each written
atomically, with their checksums.

[`pretrain`] takes the three argument groups of `scripts/pretrain.py` (see `clay_hf.training.arguments`); a
[`Pretrainer`] holds what one run is made of (accelerator, model, optimizer, schedule, loaders, counters) and
trains.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, astuple, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from datasets.distributed import split_dataset_by_node
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LRScheduler
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import get_cosine_schedule_with_warmup
from transformers.utils.logging import get_logger, tqdm

from ..data.chips import ChipLayout
from ..data.dataset import (
    auto_num_shards,
    collate_chips,
    drop_nonfinite_chips,
    model_inputs,
    shard_paths,
    worker_start_method,
)
from ..data.sources import ShardSelection, check_chips_usable, load_chip_dataset, split_chip_source
from ..evaluation.reconstruction import masked_error_totals
from ..models.clay.configuration_clay import CLAY_V0_PRESETS, ClayConfig
from ..models.clay.image_processing_clay import ClayImageProcessor
from ..models.clay.modeling_clay import ClayForMaskedImageModeling
from ..utils.benchmarking import FUSED_ADAMW_DEVICES
from ..utils.distributed import Watchdog, barrier_group, is_rank_failure, monitored_barrier
from ..utils.errors import ClayUserError, RanksTimeoutError
from ..utils.memory import configure_training_malloc
from ..utils.outputs import OutputLock, make_folder, remove_partials
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .checkpointing import (
    TrainState,
    check_data_layout,
    check_recipe,
    current_run,
    data_layout,
    load_checkpoint,
    new_run_id,
    prune_pretrained_folders,
    resolve_checkpoint,
    save_checkpoint,
    start_run,
)
from .prefetch import DevicePrefetcher
from .summary import SUMMARY_NAME, save_pretrained_folder, tracker_config, training_recipe, training_summary

logger = get_logger(__name__)
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11 on torch ≥ 2.10

ChipSource = list[str] | ShardSelection


class NonFiniteLossError(ClayUserError, RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss."""


@dataclass
class StepWindow:
    """What the micro-batches of one optimizer step add up to (over all ranks)."""

    loss: float = 0.0
    chips: int = 0
    micro_batches: int = 0
    bad: bool = False
    synced: bool = True
    started: float = field(default_factory=time.perf_counter)


@dataclass
class MicroBatchStatistics:
    """What one micro-batch of one rank adds to its window; summed over ranks in one collective ([`reduced`])."""

    loss: float = 0.0  # the rank's loss, when its batch is real and the loss finite
    finite_ranks: float = 0.0  # 1 when the rank's loss is finite (a padding batch counts as finite)
    chips: float = 0.0  # chips trained on
    bad_chips: float = 0.0  # chips taken out of the batch as bad
    real_batches: float = 0.0  # 1 when the batch is real, 0 for padding

    def reduced(self, accelerator: Accelerator) -> MicroBatchStatistics:
        """The statistics summed over all ranks."""
        values = torch.tensor(astuple(self), device=accelerator.device, dtype=torch.float64)
        return MicroBatchStatistics(*accelerator.reduce(values, "sum").tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def build_config(model_args: ModelArguments) -> ClayConfig:
    """A preset name or a config.json, with the image size, patch size and mask ratio overrides."""
    overrides = model_args.config_overrides()
    if model_args.model_name_or_path:
        return ClayConfig.from_pretrained(model_args.model_name_or_path, **overrides)
    if model_args.config_name in CLAY_V0_PRESETS:
        return ClayConfig.from_preset(model_args.config_name, **overrides)
    if Path(model_args.config_name).is_file():
        return ClayConfig.from_dict({**ClayConfig.from_json_file(model_args.config_name).to_dict(), **overrides})
    raise ClayUserError(
        f"--config_name {model_args.config_name!r} is neither a preset {sorted(CLAY_V0_PRESETS)} nor a file"
    )


def build_model(model_args: ModelArguments, config: ClayConfig) -> ClayForMaskedImageModeling:
    if model_args.model_name_or_path:
        model = ClayForMaskedImageModeling.from_pretrained(
            model_args.model_name_or_path, config=config, attn_implementation=model_args.attn_implementation
        )
    else:
        config._attn_implementation = model_args.attn_implementation
        model = ClayForMaskedImageModeling(config)
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


def build_optimizer(
    model: torch.nn.Module, args: PretrainingArguments, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """AdamW over all parameters, as v0; on CUDA and the CPU the fused kernel (one pass over each parameter's
    memory instead of a dozen elementwise ops: on a CPU that is a tenth of a training step)."""
    device = device if device is not None else next(model.parameters()).device
    return torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        fused=device.type in FUSED_ADAMW_DEVICES,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, args: PretrainingArguments, total_steps: int) -> LRScheduler:
    """v0: CosineAnnealingWarmRestarts(T_0=1000, T_mult=2, eta_min=10·lr), stepped every optimizer step.

    Note that v0's eta_min is ten times the base lr: within each period the lr RISES from lr to 10·lr.
    """
    if args.lr_scheduler == "cosine_with_warmup":
        return get_cosine_schedule_with_warmup(optimizer, args.num_warmup_steps, total_steps)
    return CosineAnnealingWarmRestarts(
        optimizer, T_0=args.restart_period, T_mult=args.restart_mult, eta_min=args.learning_rate * args.eta_min_factor
    )


def training_layout(config: ClayConfig, processor: ClayImageProcessor, data_args: DataArguments) -> ChipLayout:
    """What each chip must give: the model's bands by name (from `--bands` or the chips' band descriptions), its
    image size, missing pixels filled with `--fill_value` or the chip skipped as bad."""
    fill_value = data_args.fill_value
    fill = None if fill_value is None else processor.fill_values(fill_value, config.band_names)
    return ChipLayout.for_model(config, chip_bands=data_args.bands, fill_values=fill)


def build_loader(
    paths: ChipSource,
    data_args: DataArguments,
    accelerator: Accelerator,
    batch_size: int,
    seed: int,
    shuffle: bool,
    layout: ChipLayout | None = None,
) -> DevicePrefetcher:
    """This rank's loader: the rank's own shards, read by its workers, with a resumable position; on CUDA each
    batch is pinned and copied to the GPU one step ahead. Chips must fit `layout` (the model's bands and image
    size); the others are skipped and counted."""
    workers = data_args.dataloader_num_workers
    dataset = load_chip_dataset(paths, world_size=accelerator.num_processes, num_workers=workers, layout=layout)
    dataset = split_dataset_by_node(dataset, rank=accelerator.process_index, world_size=accelerator.num_processes)
    if shuffle:
        dataset = dataset.shuffle(seed=seed, buffer_size=max(1, data_args.shuffle_buffer_size))
    loader = StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_chips,
        multiprocessing_context=worker_start_method(workers),
        pin_memory=accelerator.device.type == "cuda",
        # Worker seeds come from this generator, not the global RNG, so that starting an epoch's iterator after a
        # resume does not shift the random masks (the global RNG is what checkpoints restore).
        generator=torch.Generator().manual_seed(seed),
    )
    return DevicePrefetcher(loader, accelerator.device)


def steps_per_epoch(paths: ChipSource, data_args: DataArguments, args: PretrainingArguments, num_processes: int) -> int:
    """Optimizer steps in one epoch, for the schedule: windows of `gradient_accumulation_steps` batches of the
    busiest rank (shards are spread over ranks; an epoch's last window may be partial and is stepped)."""
    # Work-shard sizes depend only on the chip count (GeoTIFF paths and shard records are split alike).
    num_shards = auto_num_shards(len(paths), num_processes, data_args.dataloader_num_workers)
    shards = shard_paths(range(len(paths)), num_shards)
    per_rank = math.ceil(len(shards) / num_processes) * max(len(shard) for shard in shards)
    batches = math.ceil(min(per_rank, len(paths)) / args.per_device_train_batch_size)
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    processor: ClayImageProcessor,
    accelerator: Accelerator,
    config: ClayConfig,
    max_chips: int | None = None,
) -> dict[str, float | None]:
    """Masked reconstruction loss in total and per band group (None: a group with no masked token), through
    `evaluate.py`'s loop ([`masked_error_totals`]: the same random masks, the same dropping of non-finite chips),
    summed over processes, so the validation loss is comparable with `evaluate.py` on the same chips."""
    model.eval()
    totals, _, _ = masked_error_totals(
        model, config, loader, processor, accelerator.device, max_chips=max_chips, autocast=accelerator.autocast
    )
    totals.reduce(lambda tensor: accelerator.reduce(tensor, "sum"))
    model.train()
    if totals.masked_mse() is None:
        return {}
    return {"loss": totals.masked_mse(), **totals.per_group()}


def synchronized_batches(loader: StatefulDataLoader, accelerator: Accelerator, last: dict[str, Any]):
    """Yield (batch, is_padding) while ANY rank has a batch, so that every chip of every rank is trained on.

    A rank whose shards are done repeats its last batch as padding (zero loss weight, not counted) while the others
    finish, so all ranks run the same collectives. `last` keeps that batch across epochs; a rank that has none
    yet (no readable chip at all) ends the epoch for every rank, with a warning.
    """
    iterator = iter(loader)
    while True:
        batch = next(iterator, None)
        if batch is not None:
            last["batch"] = batch
        flags = torch.tensor(
            [int(batch is not None), int(batch is None and "batch" not in last)], device=accelerator.device
        )
        flags = accelerator.reduce(flags, "sum")
        if int(flags[0]) == 0:
            return
        if int(flags[1]) > 0:
            logger.warning("a rank has no chip to pad with while others still train: the epoch ends here")
            return
        yield last["batch"], batch is None


def placeholder_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One all-zero chip in the shape of `inputs` (which hold none): a rank whose micro-batch held only bad chips
    runs it, with its loss scaled by 0, so that it still joins the step's collectives and adds no gradient."""
    return {
        key: torch.zeros((1, *value.shape[1:]), dtype=value.dtype, device=value.device) for key, value in inputs.items()
    }


def padding_state(batch: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a checkpoint keeps of the batch a rank pads with: what the model and the counters read (tensors on the
    CPU, names), so that a resume pads as the unbroken run does; loadable with `torch.load(weights_only=True)`."""
    if batch is None:
        return None
    kept = {key: value.cpu() for key, value in batch.items() if isinstance(value, torch.Tensor)}
    return {**kept, "source_url": list(batch["source_url"]), "bad_chips": 0, "bad_chip_sources": []}


def check_world(accelerator: Accelerator) -> None:
    """Refuse to run N copies of a 1-process job: each would train alone on all the data."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ClayUserError(
            f"{launched} processes were launched, but Accelerate set up {accelerator.num_processes}: each "
            "process would train alone. On a CPU, launch with ACCELERATE_USE_CPU=1 and --multi_gpu "
            "(plain --cpu --num_processes N runs one process)."
        )


def simulated_fault(step: int, rank: int) -> None:
    """For fault tests: die abruptly (no cleanup, like a kill) after `CLAY_HF_CRASH_AFTER_STEP` steps; stall for an
    hour (a machine that stops answering) on rank R after step S with `CLAY_HF_STALL_AFTER_STEP=R:S`."""
    if os.environ.get("CLAY_HF_CRASH_AFTER_STEP") == str(step):
        os._exit(17)
    if os.environ.get("CLAY_HF_STALL_AFTER_STEP") == f"{rank}:{step}":
        time.sleep(3600)


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def pretrain(model_args: ModelArguments, data_args: DataArguments, args: PretrainingArguments) -> dict[str, Any]:
    """Run pretraining; return the training summary (also written to `args.output_dir`)."""
    started = time.perf_counter()
    report_to = None if args.report_to == "none" else args.report_to
    # Gradient accumulation is ours (see `Pretrainer.micro_step`): windows end at an epoch's end too, as a partial
    # window.
    # A collective that waits --rank_timeout seconds for a rank fails (see `Pretrainer.train`).
    patience = InitProcessGroupKwargs(timeout=timedelta(seconds=args.rank_timeout))
    accelerator = Accelerator(log_with=report_to, project_dir=args.output_dir, kwargs_handlers=[patience])
    check_world(accelerator)
    configure_training_malloc(accelerator.device, args.cpu_malloc_mmap_threshold)
    output_dir = make_folder(args.output_dir)
    lock = OutputLock(output_dir).acquire() if accelerator.is_main_process else None  # one run per output folder
    try:
        if lock is not None:
            remove_partials(output_dir)
        return Pretrainer(model_args, data_args, args, accelerator, started).train()
    finally:
        if lock is not None:
            lock.release()


class Pretrainer:
    """One pretraining run: the accelerator, model, optimizer, schedule, loaders and counters, and the loop.

    Built on every rank, holding the output folder (see [`pretrain`]); `train()` runs it and returns the summary.
    """

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        args: PretrainingArguments,
        accelerator: Accelerator,
        started: float,
    ) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, args
        self.accelerator = accelerator
        self.output_dir = Path(args.output_dir)
        self.started = started
        set_seed(args.seed)  # the same initial weights on every rank
        self.config = build_config(model_args)
        model = build_model(model_args, self.config)
        self.processor = ClayImageProcessor(band_names=self.config.band_names)
        optimizer = build_optimizer(model, args, accelerator.device)
        train_paths, validation_paths = split_chip_source(
            data_args.train_dir, data_args.validation_dir, data_args.validation_fraction
        )
        self.max_steps = args.max_train_steps or (
            steps_per_epoch(train_paths, data_args, args, accelerator.num_processes) * args.num_train_epochs
        )
        # The scheduler is stepped by us once per optimizer step (as v0), not by Accelerate, which would step it
        # once per process; checkpoints hold it in a file of their own (see `save_checkpoint`).
        self.scheduler = build_scheduler(optimizer, args, self.max_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if model_args.torch_compile:
            self.model = torch.compile(self.model)
        set_seed(args.seed, device_specific=True)  # different masks on every rank

        self.train_loader, self.eval_loader = self._loaders(train_paths, validation_paths)
        self.padding: dict[str, Any] = {}  # the batch a rank pads with once its shards are done
        self.state = self._start(train_paths)
        #: The epoch a resume continues (None for a fresh run), which may hold no chip left to train on.
        self.resumed_epoch = self.state.epoch if args.resume_from_checkpoint else None
        self.window = StepWindow()
        # Ranks that wait for each other say so, and name the missing ones when they give up.
        distributed = accelerator.num_processes > 1
        self.barrier_group = barrier_group() if distributed else None
        silence = min(300.0, args.rank_timeout / 3)
        message = f"rank {accelerator.process_index} has finished no micro-batch for a while (waiting for its data or "
        message += f"for other ranks; a rank that does not answer for {args.rank_timeout:.0f} s ends the run)"
        self.watchdog = Watchdog(message, silence, active=distributed, first_seconds=silence)
        self.logged_losses: list[float] = []  # every --logging_steps steps of this session
        self.elapsed_before = self.state.wall_time
        self.progress: tqdm | None = None  # the progress bar, while `train` runs

    # --- set-up -------------------------------------------------------------------------------------------------------

    def _loaders(
        self, train_paths: ChipSource, validation_paths: ChipSource
    ) -> tuple[DevicePrefetcher, DevicePrefetcher | None]:
        """The training loader and the validation loader (None without validation chips); a run that can use no
        training chip says why before it works."""
        layout = training_layout(self.config, self.processor, self.data_args)
        check_chips_usable(train_paths, layout)
        args = self.args

        def loader(paths: ChipSource, batch_size: int, shuffle: bool) -> DevicePrefetcher:
            return build_loader(paths, self.data_args, self.accelerator, batch_size, args.seed, shuffle, layout)

        train_loader = loader(train_paths, args.per_device_train_batch_size, shuffle=True)
        if not validation_paths:
            logger.warning(
                "no validation chips (validation_fraction=%s): validation is skipped",
                self.data_args.validation_fraction,
            )
            return train_loader, None
        return train_loader, loader(validation_paths, args.per_device_eval_batch_size, shuffle=False)

    def _start(self, train_paths: ChipSource) -> TrainState:
        """A fresh run's counters, or those of the checkpoint it resumes; the run's id and checkpoint names."""
        layout = data_layout(
            train_paths,
            self.accelerator.num_processes,
            self.data_args.dataloader_num_workers,
            self.data_args.shuffle_buffer_size,
            self.args.seed,
        )
        state, resumed = TrainState(data_layout=layout, run_id=new_run_id(), recipe=training_recipe(self.args)), None
        if self.args.resume_from_checkpoint:
            state, resumed = self._resume(self.args.resume_from_checkpoint, layout)
        if self.accelerator.is_main_process:
            start_run(self.output_dir, state.run_id, resumed)
        self.accelerator.wait_for_everyone()
        run = current_run(self.output_dir)  # the main process's run id and checkpoint names, on every rank
        state.run_id, state.checkpoint_suffix = run["run_id"], run["checkpoint_suffix"]
        return state

    def _resume(self, value: str, layout: dict[str, Any]) -> tuple[TrainState, Path]:
        """The run's state from a verified checkpoint: counters, data position and the batch this rank pads with."""
        checkpoint = resolve_checkpoint(self.output_dir, value)
        saved, data_state = load_checkpoint(self.accelerator, checkpoint, self.scheduler)
        check_data_layout(saved.get("data_layout") or {}, layout, checkpoint)
        check_recipe(saved.get("recipe") or {}, training_recipe(self.args), checkpoint)
        state = TrainState(**{**saved, "data_layout": layout})
        self.train_loader.dataset.set_epoch(state.epoch)
        if data_state is not None:
            if data_state["padding_batch"] is not None:
                self.padding["batch"] = data_state["padding_batch"]
            self.train_loader.load_state_dict(data_state["loader"])
        self.accelerator.print(f"resumed from {checkpoint} at step {state.global_step}, epoch {state.epoch}")
        return state, checkpoint

    # --- the loop -----------------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Train until --max_train_steps or --num_train_epochs, validate, save the model; return the summary."""
        self.accelerator.init_trackers(
            "clay_pretrain", config=tracker_config(self.model_args, self.data_args, self.args)
        )
        seen_log = self._open_seen_log()
        self.progress = tqdm(
            total=self.max_steps,
            initial=self.state.global_step,
            disable=not self.accelerator.is_local_main_process,
            desc="pretraining",
            mininterval=1.0,
        )
        try:
            with self.watchdog:
                while self._more_training():
                    self._train_epoch(seen_log)
        except RuntimeError as error:  # a collective that timed out: name the ranks that are gone, if any
            if is_rank_failure(error):
                self._check_ranks(error)
            raise
        finally:  # the bar ends its line, so that an error is a line of its own
            self.progress.close()
            if seen_log is not None:
                seen_log.close()
        if self.state.chips_seen == 0:
            self._no_chips()
        self.validate()
        summary = self._finish()
        self.accelerator.print(f"saved the pretrained model, processor and {SUMMARY_NAME} to {self.output_dir}")
        return summary

    def _check_ranks(self, failure: RuntimeError) -> None:
        """After a collective failed for want of a rank: a RanksTimeoutError naming the ranks that do not answer (a
        dead machine), chained to the collective's error; returns when every rank answers."""
        if self.accelerator.num_processes == 1:
            return
        step, timeout = self.state.global_step + 1, self.args.rank_timeout
        try:
            monitored_barrier(f"step {step}", self.barrier_group, self.accelerator.process_index, min(60.0, timeout))
        except RanksTimeoutError as gone:
            raise RanksTimeoutError(
                f"{gone.missing} stopped answering at step {step} (a collective waited for them up to "
                f"--rank_timeout {timeout:.0f} s); their machines may be gone. Resume from the newest checkpoint "
                "with --resume_from_checkpoint latest"
            ) from failure

    def _open_seen_log(self):
        """`seen_chips_rankN.txt` of --log_seen_chips, line-buffered: each line is with the OS as soon as it is
        written, so a kill loses none."""
        if not self.args.log_seen_chips:
            return None
        return (self.output_dir / f"seen_chips_rank{self.accelerator.process_index}.txt").open("a", buffering=1)

    def _more_training(self) -> bool:
        """Until --max_train_steps optimizer steps when given, else until --num_train_epochs whole epochs are done."""
        if self.args.max_train_steps:
            return self.state.global_step < self.max_steps
        return self.state.epoch < self.args.num_train_epochs

    def _train_epoch(self, seen_log) -> None:
        """One pass over this rank's chips (or until --max_train_steps), stepping every accumulation window and the
        epoch's last, partial one."""
        state, args = self.state, self.args
        self.train_loader.dataset.set_epoch(state.epoch)
        chips_before_epoch = state.chips_seen
        for batch, padding in synchronized_batches(self.train_loader, self.accelerator, self.padding):
            if seen_log is not None and not padding:
                seen_log.write("".join(f"{state.epoch}\t{url}\n" for url in batch["source_url"]))
            self.window.micro_batches += 1
            end_of_window = self.window.micro_batches == args.gradient_accumulation_steps
            self.micro_step(batch, padding, sync=end_of_window)
            if end_of_window:
                self._end_window()
                if args.max_train_steps and state.global_step >= args.max_train_steps:
                    return
        # An epoch without a usable chip ends the run, but for the epoch a resume continues: it may have been done.
        if state.chips_seen + self.window.chips == chips_before_epoch and state.epoch != self.resumed_epoch:
            self._no_chips()
        if self.window.micro_batches:  # the epoch's last window is partial: stepped, as Lightning and Trainer do
            logger.info(
                "epoch %d ended with a partial accumulation window of %d of %d batches: stepped, its gradient "
                "averaged over its %d batches",
                state.epoch,
                self.window.micro_batches,
                args.gradient_accumulation_steps,
                self.window.micro_batches,
            )
            self._end_window(partial=True)
        state.epoch += 1

    def micro_step(self, batch: dict[str, Any], padding: bool, sync: bool) -> None:
        """Forward, agree across ranks whether the loss is finite, then backward (gradients all-reduced by DDP only
        at the window's last batch, `sync`). A `padding` batch (see `synchronized_batches`) has zero weight and is
        not counted.

        Bad chips were taken out of the batch (and are counted); a micro-batch left with no chip runs a placeholder
        with zero weight. A non-finite loss on any rank marks the whole window bad: every rank skips its backward
        passes from there and the step is dropped, so ranks never disagree on a collective.
        """
        accelerator, model, window = self.accelerator, self.model, self.window
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            inputs = model_inputs(batch, self.processor, accelerator.device, self.config.band_names)
            batch, inputs = drop_nonfinite_chips(batch, inputs)
            empty = not batch["source_url"]
            with accelerator.autocast():
                loss = model(**(placeholder_inputs(inputs) if empty else inputs)).loss
            if empty:
                loss = loss * 0.0
            finite = padding or bool(torch.isfinite(loss.detach()))
            real = not padding
            totals = MicroBatchStatistics(
                loss=loss.item() if finite and real else 0.0,
                finite_ranks=float(finite),
                chips=len(batch["source_url"]) if real else 0,
                bad_chips=batch["bad_chips"] if real else 0,
                real_batches=float(real),
            ).reduced(accelerator)  # one collective for all of them
            all_finite = int(totals.finite_ranks) == accelerator.num_processes
            window.bad = window.bad or not all_finite
            if not window.bad:
                weight = 0.0 if padding else 1.0 / self.args.gradient_accumulation_steps
                accelerator.backward(loss * weight)
        self.watchdog.beat()
        window.synced = sync
        window.loss += totals.loss / max(totals.real_batches, 1.0) if all_finite else 0.0
        window.chips += int(totals.chips)
        self.state.bad_chips += int(totals.bad_chips)

    def _end_window(self, partial: bool = False) -> None:
        """One accumulation window is complete (an epoch's last, `partial` one too): step (or skip a bad step, or
        drop a window without a chip), count, log, then validate and checkpoint when due."""
        state, window = self.state, self.window
        self.window = StepWindow()
        if window.chips == 0:  # every micro-batch of every rank held only bad chips: nothing to learn from
            self.optimizer.zero_grad()
            state.empty_windows += 1
            if self.accelerator.is_main_process:
                logger.warning("an accumulation window held no usable chip on any rank: no optimizer step")
            return
        state.partial_windows += int(partial)
        self._optimizer_step(window)
        if window.bad:
            self._skip_step()
        else:
            self.scheduler.step()
            state.consecutive_nonfinite = 0
            state.train_loss = window.loss / window.micro_batches
        state.global_step += 1
        if not window.bad and state.global_step % self.args.logging_steps == 0:
            self.logged_losses.append(state.train_loss)
        state.chips_seen += window.chips
        state.wall_time = self.elapsed_before + time.perf_counter() - self.started
        self._report(window)
        self._after_step()

    def _optimizer_step(self, window: StepWindow) -> None:
        """Step on the window's gradients: all-reduced by hand if its last batch ran without DDP's sync (an epoch's
        partial window), and rescaled to the mean over its batches when it holds fewer than a full window."""
        args = self.args
        if not window.bad:
            parameters = [p for p in self.model.parameters() if p.grad is not None]
            if not window.synced and self.accelerator.num_processes > 1:
                flat = self.accelerator.reduce(torch.cat([p.grad.reshape(-1) for p in parameters]), "mean")
                offset = 0
                for parameter in parameters:
                    parameter.grad.copy_(flat[offset : offset + parameter.grad.numel()].view_as(parameter.grad))
                    offset += parameter.grad.numel()
            if window.micro_batches < args.gradient_accumulation_steps:
                for parameter in parameters:
                    parameter.grad.mul_(args.gradient_accumulation_steps / window.micro_batches)
            if args.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad()  # also drops a bad window's gradients

    def _skip_step(self) -> None:
        state = self.state
        state.nonfinite_steps += 1
        state.consecutive_nonfinite += 1
        logger.warning(
            "non-finite loss at step %d: step skipped (%d in a row, %d in all)",
            state.global_step + 1,
            state.consecutive_nonfinite,
            state.nonfinite_steps,
        )
        if state.consecutive_nonfinite >= self.args.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{state.consecutive_nonfinite} optimizer steps in a row had a non-finite loss (at step "
                f"{state.global_step + 1}); stopping. The last good checkpoint in {self.output_dir / 'checkpoints'} "
                "is kept: lower the learning rate or check the data, then --resume_from_checkpoint latest."
            )

    def _after_step(self) -> None:
        """Validation and checkpoints every N steps; the simulated crash of the resume tests."""
        step, args = self.state.global_step, self.args
        if args.eval_steps and step % args.eval_steps == 0:
            self.validate()
        if args.checkpointing_steps and step % args.checkpointing_steps == 0:
            self.checkpoint()
        simulated_fault(step, self.accelerator.process_index)

    def _report(self, window: StepWindow) -> None:
        """The progress bar every step; the trackers every --logging_steps steps."""
        state = self.state
        chips_per_second = window.chips / max(time.perf_counter() - window.started, 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        loss = state.train_loss if state.train_loss is not None else float("nan")
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{loss:.4f}", chips_s=f"{chips_per_second:.1f}", lr=f"{lr:.2e}")
        if state.global_step % self.args.logging_steps == 0:
            self.accelerator.log(
                {
                    "train/loss": loss,
                    "train/lr": lr,
                    "train/chips_per_second": chips_per_second,
                    "train/bad_chips_skipped": state.bad_chips,
                    "train/nonfinite_steps": state.nonfinite_steps,
                },
                step=state.global_step,
            )

    def _no_chips(self) -> None:
        raise ClayUserError(
            f"no training chip could be used from {self.data_args.train_dir} ({self.state.bad_chips} bad chips "
            "skipped; the warnings name each and say why)"
        )

    # --- validation, checkpoints, the summary ---------------------------------------------------------------------------

    def validate(self) -> None:
        """The validation loss, in the state and the trackers (nothing without validation chips)."""
        if self.eval_loader is None:
            return
        # The unwrapped model: ranks may hold different numbers of validation chips, and DDP must not be involved.
        model = self.accelerator.unwrap_model(self.model)
        loader = self.watchdog.beating(self.eval_loader)  # each validation batch is progress
        metrics = evaluate(model, loader, self.processor, self.accelerator, self.config, self.data_args.max_eval_chips)
        if not metrics:
            return
        self.state.validation_loss = metrics["loss"]
        self.state.validation_group_losses = {name: value for name, value in metrics.items() if name != "loss"}
        measured = {f"validation/{name}": value for name, value in metrics.items() if value is not None}
        self.accelerator.log(measured, step=self.state.global_step)

    def checkpoint(self) -> None:
        """A resumable checkpoint of this step (and a `pretrained-N` folder with
        --save_every_checkpoint_as_pretrained)."""
        state, args = self.state, self.args
        self.watchdog.beat()
        data_state = {
            "loader": self.train_loader.state_dict(),
            "padding_batch": padding_state(self.padding.get("batch")),
        }
        path = save_checkpoint(
            self.accelerator,
            self.output_dir,
            state.global_step,
            asdict(state),
            data_state,
            args.checkpoints_total_limit,
            state.checkpoint_suffix,
            self.scheduler,
        )
        if args.save_every_checkpoint_as_pretrained:
            folder = self.output_dir / f"pretrained-{state.global_step}"
            save_pretrained_folder(self.accelerator, self.model, self.processor, folder, self.summary(logged=[]))
            if self.accelerator.is_main_process:
                prune_pretrained_folders(self.output_dir, args.checkpoints_total_limit, state.run_id)
        self.watchdog.beat()
        self.accelerator.print(f"checkpoint saved to {path}")

    def _finish(self) -> dict[str, Any]:
        """Save the model, processor and summary in the run's folder; end the trackers."""
        self.state.wall_time = self.elapsed_before + time.perf_counter() - self.started
        summary = self.summary(self.logged_losses)
        save_pretrained_folder(self.accelerator, self.model, self.processor, self.output_dir, summary, shared=True)
        self.accelerator.end_training()
        return summary

    def summary(self, logged: list[float]) -> dict[str, Any]:
        """`training_summary.json` of the run so far ([`training_summary`])."""
        model = self.accelerator.unwrap_model(self.model)
        return training_summary(self.state, self.args, self.model_args, self.accelerator, model, logged)


__all__ = ["NonFiniteLossError", "Pretrainer", "TrainState", "build_scheduler", "evaluate", "pretrain"]
