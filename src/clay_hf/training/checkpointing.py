"""Resumable, atomic, verified training checkpoints, each of one run.

A checkpoint is written by every rank into `checkpoints/.checkpoint-{step}.partial` (Accelerate's state: model,
optimizer, scheduler, RNG; plus each rank's data position and padding batch, and the run's counters), then, once all
ranks are done, the main process records the SHA-256 of every file in `checksums.sha256` and renames the folder to
`checkpoints/checkpoint-{step}` (see `clay_hf.utils.outputs.atomic_folder`). A kill mid-write leaves only a partial
folder, which `latest` never picks; a damaged checkpoint (a flipped bit, a truncated file) is refused by name, and
the message names the newest intact one. Steps are named by us, not by Accelerate's automatic naming, whose counter
`load_state` does not restore.

Every run has an id, recorded in each of its checkpoints and, for the run that last started in the folder, in
`checkpoints/current_run.json`. A run started afresh in a folder that holds another run's checkpoints names its own
`checkpoint-{step}-{run id}`, so names never collide; rotation deletes only the run's own checkpoints, and
`--resume_from_checkpoint latest` resumes only the folder's current run (or is refused, naming both runs). The
counters record the data layout (processes, workers, shuffle, seed, training chips) that the data positions depend
on; a resume under another layout is refused by name.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers.utils.logging import get_logger

from ..data.chips import chip_file_name
from ..data.sources import ShardSelection
from ..utils.errors import IntegrityError, ResumeError
from ..utils.outputs import (
    atomic_folder,
    partial_path,
    read_json,
    remove_partials,
    verify_checksums,
    write_checksums,
    write_json,
    writing,
)

logger = get_logger(__name__)


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)(?:-([0-9a-f]+))?$")
PRETRAINED_PATTERN = re.compile(r"^pretrained-(\d+)$")
TRAIN_STATE_NAME = "train_state.json"
SCHEDULER_STATE_NAME = "scheduler_state.pt"
CURRENT_RUN_NAME = "current_run.json"


@dataclass
class TrainState:
    """The run's counters, saved with every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    chips_seen: int = 0
    bad_chips: int = 0
    nonfinite_steps: int = 0
    consecutive_nonfinite: int = 0
    empty_windows: int = 0
    train_loss: float | None = None
    validation_loss: float | None = None
    validation_group_losses: dict[str, float] = field(default_factory=dict)
    wall_time: float = 0.0
    partial_windows: int = 0
    data_layout: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    checkpoint_suffix: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)


def checkpoints_dir(output_dir: str | PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | PathLike, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints, oldest first: all of them, or those of the run `run_id`."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [
        (int(match[1]), path.name, path)
        for path in folder.iterdir()
        if (match := CHECKPOINT_PATTERN.match(path.name)) and path.is_dir()
    ]
    checkpoints = [path for _, _, path in sorted(found)]
    return checkpoints if run_id is None else [path for path in checkpoints if checkpoint_run(path) == run_id]


def checkpoint_run(checkpoint: Path) -> str | None:
    """The id of the run that wrote a checkpoint (from its name, else its counters); None when its counters cannot
    be read."""
    match = CHECKPOINT_PATTERN.match(checkpoint.name)
    if match and match[2]:
        return match[2]
    try:
        return read_json(checkpoint / TRAIN_STATE_NAME).get("run_id")
    except (OSError, IntegrityError, AttributeError):
        return None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def start_run(output_dir: str | PathLike, run_id: str, resumed: Path | None = None) -> str:
    """Record `run_id` as the folder's current run; return the suffix its checkpoint names take ('' or '-ID').

    A fresh run in a folder holding other checkpoints gets a suffix (its names never collide with theirs); a resumed
    run keeps its checkpoint's naming. Call it from the main process, holding the output's lock.
    """
    if resumed is not None:
        match = CHECKPOINT_PATTERN.match(resumed.name)
        suffix = f"-{match[2]}" if match and match[2] else ""
    else:
        suffix = f"-{run_id}" if list_checkpoints(output_dir) else ""
    record = {"run_id": run_id, "checkpoint_suffix": suffix, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    checkpoints_dir(output_dir).mkdir(parents=True, exist_ok=True)
    write_json(checkpoints_dir(output_dir) / CURRENT_RUN_NAME, record)
    return suffix


def current_run(output_dir: str | PathLike) -> dict[str, Any] | None:
    """The folder's current run (`run_id`, `started`), or None when no run has started in it."""
    path = checkpoints_dir(output_dir) / CURRENT_RUN_NAME
    return read_json(path) if path.is_file() else None


def resolve_checkpoint(output_dir: str | PathLike, value: str) -> Path:
    """`latest` → the newest checkpoint of the folder's current run; anything else is a checkpoint folder.

    `latest` is refused, naming both runs, when the folder's checkpoints are all of another run.
    """
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir(output_dir)}")
        current = current_run(output_dir)
        if current is None:
            return checkpoints[-1]
        own = [path for path in checkpoints if checkpoint_run(path) == current["run_id"]]
        if not own:
            newest = checkpoints[-1]
            raise ResumeError(
                f"--resume_from_checkpoint latest: {checkpoints_dir(output_dir)} holds no checkpoint of its current "
                f"run {current['run_id']} (started {current.get('started')}); its newest, {newest}, is of run "
                f"{checkpoint_run(newest)}. Resume that run by path (--resume_from_checkpoint {newest}), or start "
                "afresh without --resume_from_checkpoint"
            )
        return own[-1]
    path = Path(value)
    if not (path / TRAIN_STATE_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAIN_STATE_NAME}).")
    return path


def verify_checkpoint(path: Path) -> None:
    """Check every file of a checkpoint against its `checksums.sha256`. A damaged one (or one without checksums) is
    an [`IntegrityError`] naming the file and the newest intact checkpoint of the same run."""
    try:
        verify_checksums(path)
    except IntegrityError as error:
        raise IntegrityError(f"{error}. {_intact_hint(path)}") from error


def _intact_hint(damaged: Path) -> str:
    """Where to resume from instead of a damaged checkpoint: the newest intact older one of its run."""
    output_dir = damaged.parent.parent
    run = checkpoint_run(damaged)
    for candidate in reversed(list_checkpoints(output_dir)):
        if candidate == damaged or candidate.name == damaged.name or (run and checkpoint_run(candidate) != run):
            continue
        try:
            verify_checksums(candidate)
        except (IntegrityError, OSError):
            continue
        return f"The newest intact checkpoint is {candidate}: --resume_from_checkpoint {candidate}"
    return "No intact checkpoint of this run is left: start afresh without --resume_from_checkpoint"


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | PathLike,
    step: int,
    train_state: dict[str, Any],
    data_state: dict[str, Any],
    total_limit: int | None = None,
    suffix: str = "",
    scheduler: Any = None,
) -> Path:
    """Write a checkpoint atomically with checksums (all ranks call this) and keep the run's newest `total_limit`.

    The `scheduler`'s state goes in `scheduler_state.pt` (read back with `weights_only=True`), not in Accelerate's
    custom checkpoints, which Accelerate loads as any pickle."""
    folder = checkpoints_dir(output_dir)
    final = folder / f"checkpoint-{step}{suffix}"
    main = accelerator.is_main_process
    with atomic_folder(final) if main else nullcontext(partial_path(final)) as staging:
        accelerator.wait_for_everyone()
        with writing(final):
            accelerator.save_state(str(staging))
            torch.save(data_state, staging / f"data_state_rank{accelerator.process_index}.pt")
            if main and scheduler is not None:
                torch.save(scheduler.state_dict(), staging / SCHEDULER_STATE_NAME)
        accelerator.wait_for_everyone()
        if main:
            write_json(staging / TRAIN_STATE_NAME, train_state)
            write_checksums(staging)
    if main:
        _rotate(output_dir, total_limit, train_state.get("run_id"))
        _remove_stale_staging(folder)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, path: Path, scheduler: Any = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Verify and restore Accelerate's state and the `scheduler`'s from `path`, every file read without running
    pickled code (`weights_only`); return the run's counters and this rank's data state."""
    verify_checkpoint(path)
    try:
        accelerator.load_state(str(path))
        data_file = path / f"data_state_rank{accelerator.process_index}.pt"
        data_state = torch.load(data_file, weights_only=True) if data_file.is_file() else None
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(path / SCHEDULER_STATE_NAME, weights_only=True))
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise IntegrityError(f"{path} cannot be loaded ({error}). {_intact_hint(path)}") from error
    return read_json(path / TRAIN_STATE_NAME), data_state


def data_layout(
    paths: Sequence[str] | ShardSelection,
    num_processes: int,
    dataloader_num_workers: int,
    shuffle_buffer_size: int,
    seed: int,
) -> dict[str, Any]:
    """What a checkpoint's data position depends on: resuming with another value would re-train or skip chips."""
    names = hashlib.sha256("\n".join(chip_file_name(path) for path in paths).encode()).hexdigest()[:16]
    return {
        "num_processes": num_processes,
        "dataloader_num_workers": dataloader_num_workers,
        "shuffle_buffer_size": shuffle_buffer_size,
        "seed": seed,
        "train_chips": len(paths),
        "train_chip_names_sha256": names,
    }


#: How to change each data-layout value on the command line, for the refusal message.
DATA_LAYOUT_FLAGS = {
    "num_processes": "accelerate launch --num_processes",
    "dataloader_num_workers": "--dataloader_num_workers",
    "shuffle_buffer_size": "--shuffle_buffer_size",
    "seed": "--seed",
    "train_chips": "--train_dir (number of training chips)",
    "train_chip_names_sha256": "--train_dir (the training chips' names and order)",
}


def check_data_layout(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume a data position under another layout, or one the checkpoint does not record (a clear message
    naming what must match)."""
    differences = _changes(saved, current, lambda key: DATA_LAYOUT_FLAGS.get(key, key))
    if differences:
        raise ResumeError(
            f"cannot resume the data position of {checkpoint}: it was saved with another data layout ("
            + "; ".join(differences)
            + "). Each rank's position in its own shards is only valid for the same number of processes, "
            "DataLoader workers, shuffle buffer, seed and training chips: resume with those, or start a new run "
            "from its weights (--model_name_or_path on a --save_every_checkpoint_as_pretrained folder)."
        )


def check_recipe(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume a run under another recipe (learning rate, batch size, schedule, …), naming each change: the
    optimizer state and schedule in the checkpoint were made with its values, and the run's summary records one."""
    start_anew = (
        "start a new run from its weights (--model_name_or_path on a --save_every_checkpoint_as_pretrained folder)"
    )
    if not saved:
        raise ResumeError(f"cannot resume {checkpoint}: it records no training recipe (an earlier clay_hf saved it); "
                          f"{start_anew}.")  # fmt: skip
    differences = _changes(saved, current, lambda key: f"--{key}")
    if differences:
        raise ResumeError(
            f"cannot resume {checkpoint} with another recipe ({'; '.join(differences)}): resume with the "
            f"checkpoint's values, or {start_anew}."
        )


def _changes(saved: dict[str, Any], current: dict[str, Any], flag: Callable[[str], str]) -> list[str]:
    """ "FLAG: SAVED in the checkpoint, CURRENT now" for each key of `current` whose value `saved` does not hold."""
    return [
        f"{flag(key)}: {saved.get(key)} in the checkpoint, {value} now"
        for key, value in current.items()
        if saved.get(key) != value
    ]


def _rotate(output_dir: str | PathLike, total_limit: int | None, run_id: str | None) -> None:
    """Keep the run's newest `total_limit` checkpoints; never touch another run's."""
    if total_limit is None or total_limit < 1:
        return
    for old in list_checkpoints(output_dir, run_id)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def prune_pretrained_folders(output_dir: str | PathLike, total_limit: int | None, run_id: str | None = None) -> None:
    """Keep the newest `total_limit` `pretrained-{step}` folders of the run (`--save_every_checkpoint_as_pretrained`);
    another run's are never touched."""
    if total_limit is None or total_limit < 1:
        return
    folder = Path(output_dir)
    found = [
        (int(match[1]), path)
        for path in folder.iterdir()
        if (match := PRETRAINED_PATTERN.match(path.name)) and _pretrained_run(path) == run_id
    ]
    for _, old in sorted(found)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def _pretrained_run(folder: Path) -> str | None:
    try:
        return read_json(folder / "training_summary.json").get("run_id")
    except (OSError, IntegrityError, AttributeError):
        return None


def _remove_stale_staging(folder: Path) -> None:
    """What killed saves left: partial folders (and `tmp-checkpoint-*` of older versions)."""
    remove_partials(folder)
    for path in folder.glob("tmp-checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "TrainState",
    "check_data_layout",
    "check_recipe",
    "checkpoint_run",
    "current_run",
    "data_layout",
    "list_checkpoints",
    "load_checkpoint",
    "new_run_id",
    "prune_pretrained_folders",
    "resolve_checkpoint",
    "save_checkpoint",
    "start_run",
    "verify_checkpoint",
]
