"""Processes that share one job through a shared folder: who am I, my share, and who has finished.

Launched by `accelerate launch` (or torchrun) every process is a rank; alone, a process is rank 0 of 1. Ranks
meet only briefly at the start (a barrier); at the end each writes a small marker file (with its counts and
timings) and the main process waits for all markers by polling the folder, so ranks of very different speeds never
hit a collective timeout, and machines need nothing but the shared folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers.utils.logging import get_logger

from ..utils.distributed import barrier_group, monitored_barrier
from ..utils.errors import ClayUserError, RanksTimeoutError
from ..utils.outputs import read_json, write_json

logger = get_logger(__name__)


#: How long the main process waits for a rank that gives no sign of life (default of `wait_for_reports`).
RANK_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class Rank:
    """This process's place in the job."""

    index: int
    world_size: int
    device: str
    _group: object | None = None  # the process group of barriers ([`barrier_group`]); None: the default

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def barrier(self, what: str, timeout_seconds: float = RANK_TIMEOUT_SECONDS, log_seconds: float = 60.0) -> None:
        """Wait until every rank reaches `what`, never silently nor forever ([`monitored_barrier`])."""
        if self.world_size > 1:
            monitored_barrier(what, self._group, self.index, timeout_seconds, log_seconds)


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
        raise ClayUserError(
            f"{os.environ['WORLD_SIZE']} processes were launched, but Accelerate set up "
            f"{state.num_processes}. On a CPU, launch with ACCELERATE_USE_CPU=1 and --multi_gpu."
        )
    return Rank(state.process_index, state.num_processes, str(state.device), barrier_group())


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
    """Say this rank has finished (written atomically)."""
    write_json(marker(folder, report.rank), asdict(report))


def clear_reports(folder: Path) -> None:
    for path in folder.glob("rank-*.done.json"):
        path.unlink()


def wait_for_reports(
    folder: Path,
    world_size: int,
    poll_seconds: float = 1.0,
    timeout_seconds: float = RANK_TIMEOUT_SECONDS,
    last_activity: Callable[[int], float] | None = None,
    log_seconds: float = 60.0,
) -> list[RankReport]:
    """Every rank's report, once all have written one.

    While it waits it says so (a warning naming the ranks after 10 s, then every `log_seconds`), and it gives up with a
    [`RanksTimeoutError`] naming them once none of the missing ranks has shown a sign of life for `timeout_seconds`
    (`last_activity(rank)`: the epoch time of its last sign, e.g. its newest output; default: the wait's start).
    """
    started = time.time()
    next_log = time.monotonic() + min(10.0, log_seconds)  # the first word soon, then every `log_seconds`
    while True:
        missing = [rank for rank in range(world_size) if not marker(folder, rank).exists()]
        if not missing:
            return [RankReport(**read_json(marker(folder, rank))) for rank in range(world_size)]
        latest = max(max(started, last_activity(rank)) if last_activity else started for rank in missing)
        if time.time() - latest > timeout_seconds:
            raise RanksTimeoutError(
                f"gave up waiting for rank(s) {missing} after {timeout_seconds:.0f} s without a sign of life "
                f"(no report in {folder}); their machines may be gone. The finished work is kept: rerun with --resume"
            )
        if time.monotonic() >= next_log:
            logger.warning("waiting for rank(s) %s to finish (giving up after %.0f s without a sign of life)",
                           missing, timeout_seconds)  # fmt: skip
            next_log = time.monotonic() + log_seconds
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
