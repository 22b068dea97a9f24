"""Waiting for the other processes of a job, never silently nor forever.

A process that waits for others says so at the default verbosity while it waits ([`saying_while_waiting`]), and a
wait that outlasts its timeout ends in a [`RanksTimeoutError`] that names the ranks that did not come
([`monitored_barrier`]: gloo's monitored barrier, on a gloo group beside NCCL's where the job runs on GPUs).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
from transformers.utils.logging import get_logger

from .errors import RanksTimeoutError

logger = get_logger(__name__)
T = TypeVar("T")

#: torch's gloo message of a monitored barrier that timed out: "Ranks 1, 3 failed to pass monitoredBarrier".
_FAILED_RANKS = re.compile(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier")


def barrier_group() -> object:
    """The process group of [`monitored_barrier`], made collectively on every rank: a gloo group of its own
    (monitored barriers are gloo's), which still works after a collective of the job's group timed out."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo")


def monitored_barrier(
    what: str, group: object | None, rank: int, timeout_seconds: float, log_seconds: float = 60.0
) -> None:
    """Wait until every rank of `group` reaches `what`, saying so while it waits; after `timeout_seconds` give up
    with a RanksTimeoutError naming the missing ranks (rank 0 knows which; the others name rank 0, whose log says)."""
    import torch.distributed as dist

    with saying_while_waiting(f"rank {rank} is waiting for the other ranks at {what}", log_seconds):
        try:
            dist.monitored_barrier(group, timedelta(seconds=timeout_seconds), wait_all_ranks=True)
        except RuntimeError as error:
            missing = _missing_ranks(str(error), rank)
            gone = RanksTimeoutError(
                f"gave up waiting for {missing} at {what} after {timeout_seconds:.0f} s; their machines may be gone. "
                "The finished work is kept: rerun with --resume"
            )
            gone.missing = missing
            raise gone from error


def is_rank_failure(error: BaseException) -> bool:
    """Whether `error`, raised by a collective, says that another rank is gone or silent (a timeout, a closed
    connection), rather than something of this rank's own (out of memory, a bug)."""
    import torch.distributed as dist

    if isinstance(error, torch.OutOfMemoryError):
        return False
    return isinstance(error, dist.DistError) or _RANK_FAILURE.search(str(error)) is not None


#: What gloo and NCCL say when a peer is silent or gone.
_RANK_FAILURE = re.compile(r"timed out|timeout|connection (closed|reset)|broken pipe", re.IGNORECASE)


def _missing_ranks(message: str, rank: int) -> str:
    """Who a timed-out monitored barrier waited for: rank 0 gets the missing ranks from gloo; the others waited
    for rank 0 (whose log names the missing ones)."""
    found = _FAILED_RANKS.search(message)
    if found is not None:
        return f"rank(s) {[int(index) for index in found.group(1).split(',')]}"
    return "rank(s) [0]" if rank != 0 else f"other ranks ({message.strip().splitlines()[0]})"


@contextmanager
def saying_while_waiting(message: str, log_seconds: float = 60.0) -> Iterator[None]:
    """Log `message` as a warning after 10 s (or `log_seconds`, if shorter), then every `log_seconds`, until the
    block ends."""
    with Watchdog(message, log_seconds):
        yield


class Watchdog:
    """A thread that logs `message` (with the seconds since the last [`beat`]) whenever `log_seconds` pass without a
    beat; the first word comes after `first_seconds` (10 s; or `log_seconds`, if shorter). A context manager: it watches inside the
    block (unless not `active`: a process that waits for nobody)."""

    def __init__(self, message: str, log_seconds: float, active: bool = True, first_seconds: float = 10.0) -> None:
        self.message, self.log_seconds, self.active = message, log_seconds, active
        self.first_seconds = min(first_seconds, log_seconds)
        self._done = threading.Event()
        self._beat = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def beat(self) -> None:
        """Progress: the silence starts again."""
        self._beat.set()

    def beating(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, with a beat after each (a loop whose every step is progress)."""
        for item in items:
            yield item
            self.beat()

    def _watch(self) -> None:
        silent, interval = 0.0, self.first_seconds
        while not self._done.wait(interval):
            if self._beat.is_set():
                self._beat.clear()
                silent, interval = 0.0, self.log_seconds
                continue
            silent += interval
            logger.warning("%s (%.0f s so far)", self.message, silent)
            interval = self.log_seconds

    def __enter__(self) -> Watchdog:
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self.active:
            self._thread.join()


__all__ = ["Watchdog", "barrier_group", "is_rank_failure", "monitored_barrier", "saying_while_waiting"]
