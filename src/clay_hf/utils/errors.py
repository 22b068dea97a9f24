"""The user errors of clay_hf: one base class, turned into one `error: …` line and exit status 1 by the commands.

Every error that means "what you gave (or the machine you run on) is wrong, not the code" subclasses
[`ClayUserError`]; its message names the file or value and says how to fix it. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from os import PathLike
from pathlib import Path


class ClayUserError(Exception):
    """A mistake in the input, the options or the machine's state (a full disk, a locked output), not a bug.

    Every subclass pickles as it is, whatever its `__init__` takes, so that it crosses a process boundary (a pool
    worker's error reaches the parent as itself, not as a broken pool).
    """

    def __reduce__(self) -> tuple:
        return _restore_error, (type(self), self.args, self.__dict__)


class OutputError(ClayUserError):
    """An output could not be written (a full disk, a read-only or vanished folder): names the path and the cause."""

    def __init__(self, path: str | PathLike, cause: BaseException | str) -> None:
        self.path = Path(path)
        self.cause = cause
        reason = cause.strerror or str(cause) if isinstance(cause, OSError) else str(cause)
        super().__init__(f"cannot write {self.path}: {reason}")


class OutputLockedError(ClayUserError):
    """Another live run writes the same output (its lock file names the holder)."""


class IntegrityError(ClayUserError):
    """A file the run would trust is damaged (truncated, a checksum that does not match): names it."""


class ResumeError(ClayUserError):
    """A resume that does not match what it would resume (another run, another model, another data layout)."""


class RanksTimeoutError(ClayUserError):
    """Ranks of a multi-process job gave no sign of life for too long (a dead machine): names them."""


def _restore_error(cls: type[ClayUserError], args: tuple, state: dict) -> ClayUserError:
    """Unpickle a [`ClayUserError`] without calling its `__init__` (whose parameters are not its `args`)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


def user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's `main(argv) -> int`: a user error is one `error: …` line on stderr and exit status 1.

    `FileNotFoundError` counts as a user error (a path given that is not there); every other exception is a bug and
    keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except (ClayUserError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return wrapper
