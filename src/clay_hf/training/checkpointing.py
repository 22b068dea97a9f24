"""Resumable, atomic training checkpoints.

A checkpoint is written to `checkpoints/tmp-checkpoint-{step}` by every rank (Accelerate's state: model,
optimizer, scheduler, RNG; plus each rank's data position and the run's counters), then renamed to
`checkpoints/checkpoint-{step}` once all ranks are done. A kill mid-write leaves only a `tmp-` folder, which
`latest` never picks. Steps are named by us, not by Accelerate's automatic naming, whose counter `load_state`
does not restore. The counters record the data layout (processes, workers, shuffle, seed, training chips) that the
data positions depend on; a resume under another layout is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from argparse import Namespace
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..data.chips import chip_file_name

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PRETRAINED_PATTERN = re.compile(r"^pretrained-(\d+)$")
TRAIN_STATE_NAME = "train_state.json"


def checkpoints_dir(output_dir: str | PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(match[1]), path) for path in folder.iterdir() if (match := CHECKPOINT_PATTERN.match(path.name))]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | PathLike, value: str) -> Path:
    """`latest` → the newest complete checkpoint of `output_dir`; anything else is a checkpoint folder."""
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir(output_dir)}")
        return checkpoints[-1]
    path = Path(value)
    if not (path / TRAIN_STATE_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAIN_STATE_NAME}).")
    return path


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | PathLike,
    step: int,
    train_state: dict[str, Any],
    data_state: dict[str, Any],
    total_limit: int | None = None,
) -> Path:
    """Write a checkpoint atomically (all ranks call this) and keep the newest `total_limit`."""
    folder = checkpoints_dir(output_dir)
    staging = folder / f"tmp-checkpoint-{step}"
    final = folder / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()

    accelerator.save_state(str(staging))
    torch.save(data_state, staging / f"data_state_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        (staging / TRAIN_STATE_NAME).write_text(json.dumps(train_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        _rotate(output_dir, total_limit)
        _remove_stale_staging(folder)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore Accelerate's state from `path`; return the run's counters and this rank's data position."""
    accelerator.load_state(str(path))
    train_state = json.loads((path / TRAIN_STATE_NAME).read_text())
    data_file = path / f"data_state_rank{accelerator.process_index}.pt"
    data_state = torch.load(data_file, weights_only=True) if data_file.is_file() else None
    return train_state, data_state


def data_layout(paths: list[str], args: Namespace, num_processes: int) -> dict[str, Any]:
    """What a checkpoint's data position depends on: resuming with another value would re-train or skip chips."""
    names = hashlib.sha256("\n".join(chip_file_name(path) for path in paths).encode()).hexdigest()[:16]
    return {
        "num_processes": num_processes,
        "dataloader_num_workers": args.dataloader_num_workers,
        "shuffle_buffer_size": args.shuffle_buffer_size,
        "seed": args.seed,
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
    """Refuse to resume a data position under another layout (a clear message naming what must match)."""
    differences = [
        f"{DATA_LAYOUT_FLAGS.get(key, key)}: {saved[key]} in the checkpoint, {current.get(key)} now"
        for key in saved
        if saved[key] != current.get(key)
    ]
    if differences:
        raise SystemExit(
            f"error: cannot resume the data position of {checkpoint}: it was saved with another data layout ("
            + "; ".join(differences)
            + "). Each rank's position in its own shards is only valid for the same number of processes, "
            "DataLoader workers, shuffle buffer, seed and training chips: resume with those, or start a new run "
            "from its weights (--model_name_or_path on a --save_every_checkpoint_as_pretrained folder)."
        )


def _rotate(output_dir: str | PathLike, total_limit: int | None) -> None:
    if total_limit is None or total_limit < 1:
        return
    for old in list_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def prune_pretrained_folders(output_dir: str | PathLike, total_limit: int | None) -> None:
    """Keep the newest `total_limit` `pretrained-{step}` folders (`--save_every_checkpoint_as_pretrained`)."""
    if total_limit is None or total_limit < 1:
        return
    folder = Path(output_dir)
    found = [(int(match[1]), path) for path in folder.iterdir() if (match := PRETRAINED_PATTERN.match(path.name))]
    for _, old in sorted(found)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(folder: Path) -> None:
    for path in folder.glob("tmp-checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "check_data_layout",
    "data_layout",
    "list_checkpoints",
    "load_checkpoint",
    "prune_pretrained_folders",
    "resolve_checkpoint",
    "save_checkpoint",
]
