"""Resumable, atomic training checkpoints.

A checkpoint is written to `checkpoints/tmp-checkpoint-{step}` by every rank (Accelerate's state: model,
optimizer, scheduler, RNG; plus each rank's data position and the run's counters), then renamed to
`checkpoints/checkpoint-{step}` once all ranks are done. A kill mid-write leaves only a `tmp-` folder, which
`latest` never picks. Steps are named by us, not by Accelerate's automatic naming, whose counter `load_state`
does not restore.
"""

from __future__ import annotations

import json
import re
import shutil
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

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


__all__ = ["list_checkpoints", "load_checkpoint", "prune_pretrained_folders", "resolve_checkpoint", "save_checkpoint"]
