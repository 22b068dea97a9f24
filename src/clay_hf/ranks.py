"""Processes that share one job through a shared folder: who am I, my share, and who has finished.

Launched by `accelerate launch` (or torchrun) every process is a rank; alone, a process is rank 0 of 1. Ranks
meet only briefly at the start (a barrier); at the end each writes a small marker file (with its counts and
timings) and the main process waits for all markers by polling the folder, so ranks of very different speeds never
hit a collective timeout, and machines need nothing but the shared folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers.utils.logging import get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class Rank:
    """This process's place in the job."""

    index: int
    world_size: int
    device: str
    _state: object | None = None  # accelerate's PartialState, for the barrier

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            self._state.wait_for_everyone()


def current_rank(device: str | None = None) -> Rank:
    """This process's rank, from the environment `accelerate launch` sets (on CPUs: ACCELERATE_USE_CPU=1 with
    --multi_gpu); one process alone is rank 0 of 1 on `device`."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Rank(0, 1, device or "cpu")
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise SystemExit(
            f"error: {os.environ['WORLD_SIZE']} processes were launched, but Accelerate set up "
            f"{state.num_processes}. On a CPU, launch with ACCELERATE_USE_CPU=1 and --multi_gpu."
        )
    return Rank(state.process_index, state.num_processes, str(state.device), state)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank `rank`'s contiguous share of `items` (shares differ in length by at most one, in order)."""
    start = len(items) * rank // world_size
    return list(items[start : len(items) * (rank + 1) // world_size])


@dataclass
class RankReport:
    """What one rank did: items processed, bad items skipped, and its wall-clock span (epoch seconds)."""

    rank: int
    processed: int
    bad: int
    started: float
    finished: float

    @property
    def rate(self) -> float:
        return self.processed / max(self.finished - self.started, 1e-9)


def marker(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}.done.json"


def write_report(folder: Path, report: RankReport) -> None:
    """Say this rank has finished (written whole, then renamed)."""
    staging = marker(folder, report.rank).with_suffix(".tmp")
    staging.write_text(json.dumps(asdict(report)))
    staging.rename(marker(folder, report.rank))


def clear_reports(folder: Path) -> None:
    for path in folder.glob("rank-*.done.json"):
        path.unlink()


def wait_for_reports(folder: Path, world_size: int, poll_seconds: float = 1.0) -> list[RankReport]:
    """Every rank's report, once all have written one (logs who is still running now and then)."""
    last_log = time.monotonic()
    while True:
        missing = [rank for rank in range(world_size) if not marker(folder, rank).exists()]
        if not missing:
            return [RankReport(**json.loads(marker(folder, rank).read_text())) for rank in range(world_size)]
        if time.monotonic() - last_log > 60:
            logger.info("waiting for ranks %s to finish", missing)
            last_log = time.monotonic()
        time.sleep(poll_seconds)


def throughput(reports: Sequence[RankReport], unit: str = "chips") -> str:
    """'N chips in T s: X chips/s in all (rank 0: …, rank 1: …)'."""
    processed = sum(report.processed for report in reports)
    seconds = max(report.finished for report in reports) - min(report.started for report in reports)
    total = f"{processed} {unit} in {seconds:.1f} s: {processed / max(seconds, 1e-9):.2f} {unit}/s in all"
    if len(reports) == 1:
        return total
    per_rank = ", ".join(f"rank {r.rank}: {r.rate:.2f} {unit}/s ({r.processed})" for r in reports)
    return f"{total} ({per_rank})"


__all__ = [
    "Rank",
    "RankReport",
    "clear_reports",
    "current_rank",
    "shard",
    "throughput",
    "wait_for_reports",
    "write_report",
]
