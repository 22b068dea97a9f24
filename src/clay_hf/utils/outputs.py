"""How every writer of clay_hf puts its outputs on disk: the one fault contract.

- **Atomic**: a file or a folder appears under its final name only when it is complete. It is written under a
  temporary name in the same folder (`.NAME.partial`), checked, flushed and fsynced, then renamed into place
  ([`atomic_file`], [`atomic_folder`]).
- **One line per fault**: an `OSError` while writing (a full disk, a read-only or vanished folder) becomes an
  [`OutputError`] naming the final path and the cause; the temporary file is removed.
- **One writer per output**: [`OutputLock`] is a lock file naming its holder (host, pid); a second run is refused
  while the holder lives and takes the lock over once it is gone.
- **Integrity**: [`write_checksums`] records SHA-256 sums of a folder's files in `checksums.sha256`
  (`sha256sum -c` reads it; [`add_checksums`] adds files one by one); [`verify_checksums`] refuses a damaged or
  missing file by name.
- **Never delete what is not ours**: a folder output replaces its folder whole, so [`foreign_contents`] names what
  a folder holds that the output did not write, for the writer to refuse it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from fnmatch import fnmatch
from os import PathLike
from pathlib import Path
from typing import Any

from .errors import IntegrityError, OutputError, OutputLockedError

PARTIAL_SUFFIX = ".partial"
CHECKSUMS_NAME = "checksums.sha256"


def partial_path(path: str | PathLike) -> Path:
    """The temporary name `path` is written under: hidden, in the same folder (so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def is_partial(path: str | PathLike) -> bool:
    """Whether `path` is an unfinished output of [`atomic_file`] or [`atomic_folder`]."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


def remove_partials(folder: str | PathLike, recursive: bool = False) -> int:
    """Remove the unfinished outputs a killed run left in `folder` (and its subfolders when `recursive`); call it
    while holding the output's lock."""
    removed = 0
    pattern = f".*{PARTIAL_SUFFIX}"
    for path in sorted(Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern), reverse=True):
        _remove(path)
        removed += 1
    return removed


def make_folder(folder: str | PathLike) -> Path:
    """Create `folder` (and its parents) or raise an [`OutputError`] naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(folder, error) from error
    return folder


@contextmanager
def atomic_file(path: str | PathLike, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield the temporary path to write `path` under; on success check it, fsync it and rename it into place.

    `verify(temporary)` may raise to refuse what was written (e.g. a GeoTIFF that does not read back, since GDAL's
    write errors are not raised at close): the file is then removed and an [`OutputError`] names `path`.
    """
    path = Path(path)
    temporary = partial_path(path)
    with writing(path, temporary):
        yield temporary
        if verify is not None:
            try:
                verify(temporary)
            except Exception as error:
                full = "; No space left on device" if _nearly_full(path.parent) else ""
                raise OutputError(path, f"it did not read back complete ({error}){full}") from error
        _fsync(temporary)
        fault_point(path)
        os.replace(temporary, path)
        _fsync(path.parent)


@contextmanager
def atomic_folder(path: str | PathLike) -> Iterator[Path]:
    """Yield a temporary folder to write the folder `path` into; on success fsync its files and swap it into place.

    An existing `path` is replaced only once the new folder is complete: a kill leaves the old folder or the new
    one, never a mixture.
    """
    path = Path(path)
    temporary = partial_path(path)
    previous = path.with_name(f".{path.name}.previous{PARTIAL_SUFFIX}")
    with writing(path, temporary):
        _remove(temporary)
        temporary.mkdir(parents=True)
        yield temporary
        for file in sorted(temporary.rglob("*")):
            _fsync(file)
        _fsync(temporary)
        fault_point(path)
        if path.exists():
            _remove(previous)
            os.replace(path, previous)
        os.replace(temporary, path)
        _fsync(path.parent)
        _remove(previous)


@contextmanager
def atomic_files(folder: str | PathLike, last: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder whose files then move into `folder` one atomic rename each (the names in `last`
    last): for outputs that share their folder with others (a training run's model beside its checkpoints).

    Every file is complete under its final name; `last` (e.g. the file that says the output is done) appears only
    after the others.
    """
    folder, last = Path(folder), set(last)
    temporary = partial_path(folder / "files")
    with writing(folder, temporary):
        _remove(temporary)
        temporary.mkdir(parents=True)
        yield temporary
        order = sorted(temporary.iterdir(), key=lambda path: (path.name in last, path.name))
        for file in order:
            _fsync(file)
        for file in order:
            fault_point(folder / file.name)
            if (folder / file.name).is_dir():
                _remove(folder / file.name)
            os.replace(file, folder / file.name)
        _fsync(folder)
        _remove(temporary)


def foreign_contents(folder: str | PathLike, own: Iterable[str] = (), marker: str | None = None) -> list[str]:
    """The names in `folder` that an output replacing it whole would delete without having written them (sorted):
    those no glob of `own` matches; none when `folder` is absent, or holds `marker` (the file by which a writer marks
    a folder as its own). A file at `folder` is an [`OutputError`]: a folder output cannot replace it."""
    folder, own = Path(folder), tuple(own)
    if not folder.exists() and not folder.is_symlink():
        return []
    if not folder.is_dir():
        raise OutputError(folder, "it is a file, not a folder")
    if marker is not None and (folder / marker).is_file():
        return []
    return sorted(path.name for path in folder.iterdir() if not any(fnmatch(path.name, glob) for glob in own))


def fault_point(path: Path) -> None:
    """Where fault tests kill a writer, deterministically: just before `path` is renamed into place. With
    `CLAY_HF_STALL_BEFORE_RENAME` set to a glob that `path` matches (the whole path), the writer stops there reading
    the FIFO named by `CLAY_HF_STALL_FIFO` (which no one writes): the test kills it once it waits."""
    pattern = os.environ.get("CLAY_HF_STALL_BEFORE_RENAME")
    if pattern and fnmatch(str(path), pattern):
        with open(os.environ["CLAY_HF_STALL_FIFO"], "rb") as fifo:
            fifo.read()


@contextmanager
def model_folder(folder: str | PathLike, record: str, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to write a model folder's files into (weights, processor, `record`: the run's JSON
    record); on success `checksums.sha256` covers them all and they go into place, the whole folder at once or,
    when `folder` is `shared` with other outputs (a run's checkpoints), one rename each: the model's files first,
    then the checksums, then `record`, whose presence says the folder is complete."""
    with atomic_files(folder, last=[CHECKSUMS_NAME, record]) if shared else atomic_folder(folder) as staging:
        yield staging
        write_checksums(staging, [path.name for path in staging.iterdir() if path.is_file()])


@contextmanager
def writing(path: str | PathLike, temporary: Path | None = None) -> Iterator[None]:
    """Turn an error while writing `path` into an [`OutputError`] (see `_output_error`), removing `temporary` (the
    atomic helpers' partial output) first; alone, for what is written by other means (another rank's share of a
    folder that the main process writes atomically)."""
    try:
        yield
    except BaseException as error:
        if temporary is not None:
            _remove(temporary)
        converted = _output_error(Path(path), error)
        if converted is error:
            raise
        raise converted from error


#: Less free space than this on the disk of an output that failed to write: the disk is full (see `_output_error`).
FULL_DISK_BYTES = 1 << 20


def _output_error(path: Path, error: BaseException) -> BaseException:
    """What an error while writing `path` means: an [`OutputError`] for an OS error, and for a library's own error
    type while the disk is full (torch and safetensors raise RuntimeError and SafetensorError for ENOSPC, naming
    no cause); anything else as it is (a bug, an interruption)."""
    if isinstance(error, OutputError):
        return error
    if isinstance(error, OSError):
        return OutputError(path, error)
    if isinstance(error, Exception) and disk_full(path):
        return OutputError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return error


def disk_full(path: str | PathLike) -> bool:
    """Whether the file system holding `path` (or its nearest existing folder) has less than `FULL_DISK_BYTES` free."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES


def write_bytes(path: str | PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | PathLike, value: Any, sort_keys: bool = False) -> Path:
    """Write `value` as indented JSON to `path` atomically (keys sorted, as transformers writes configs, if asked)."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | PathLike) -> Any:
    """Read a JSON file the project wrote, or raise an [`IntegrityError`] naming it (truncated, empty, not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IntegrityError(f"{path} is damaged (not complete JSON: {error})") from error


# ---------------------------------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | PathLike, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | PathLike, files: Iterable[str | PathLike] | None = None) -> Path:
    """Record the SHA-256 of `files` (default: every file under `folder`) in `folder/checksums.sha256`."""
    folder = Path(folder)
    chosen = sorted(Path(file) for file in files) if files is not None else sorted(folder.rglob("*"))
    lines = [
        f"{sha256_file(folder / file)}  {(folder / file).relative_to(folder).as_posix()}\n"
        for file in chosen
        if (folder / file).is_file() and Path(file).name != CHECKSUMS_NAME
    ]
    return write_text(folder / CHECKSUMS_NAME, "".join(lines))


def read_checksums(folder: str | PathLike) -> dict[str, str]:
    """The SHA-256 recorded for each file in `folder/checksums.sha256` (name → hex; empty when there is none)."""
    listing = Path(folder) / CHECKSUMS_NAME
    try:
        text = listing.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise IntegrityError(f"{listing} cannot be read ({error})") from error
    entries = {}
    for line in text.splitlines():
        expected, separator, name = line.partition("  ")
        if not separator or len(expected) != 64:
            raise IntegrityError(f"{listing} is damaged (a line that is not 'SHA256  NAME': {line!r})")
        entries[name] = expected
    return entries


def add_checksums(folder: str | PathLike, files: Iterable[str | PathLike]) -> Path:
    """Add (or replace) the SHA-256 of `files` in `folder/checksums.sha256`, keeping its other entries: for a
    folder that grows file by file (embedding parts)."""
    folder = Path(folder)
    entries = read_checksums(folder)
    for file in files:
        entries[(folder / file).relative_to(folder).as_posix()] = sha256_file(folder / file)
    return write_text(
        folder / CHECKSUMS_NAME, "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))
    )


def verify_file(folder: str | PathLike, name: str, expected: str) -> None:
    """Check one file of `folder` against its recorded SHA-256, or raise an [`IntegrityError`] naming it."""
    file = Path(folder) / name
    if not file.is_file():
        raise IntegrityError(f"{file} is missing (listed in {Path(folder) / CHECKSUMS_NAME})")
    if sha256_file(file) != expected:
        raise IntegrityError(f"{file} is damaged: its SHA-256 does not match {Path(folder) / CHECKSUMS_NAME}")


def verify_checksums(folder: str | PathLike, required: bool = True) -> list[str]:
    """Check every file `checksums.sha256` names in `folder`; return their names, or raise an [`IntegrityError`].

    Without a checksums file: an [`IntegrityError`] when `required`, else nothing is checked (an empty list).
    """
    folder = Path(folder)
    listing = folder / CHECKSUMS_NAME
    if not listing.is_file():
        if required:
            raise IntegrityError(f"{folder} has no {CHECKSUMS_NAME}: it was not written completely")
        return []
    checked = []
    for name, expected in read_checksums(folder).items():
        verify_file(folder, name, expected)
        checked.append(name)
    return checked


# ---------------------------------------------------------------------------------------------------------------------
# One writer per output
# ---------------------------------------------------------------------------------------------------------------------


def lock_path(output: str | PathLike) -> Path:
    """The lock file of an output (a file or a folder): `NAME.lock` beside it (`.` is named by its absolute path)."""
    output = Path(os.path.abspath(output))
    return output.with_name(f"{output.name}.lock")


class OutputLock:
    """A lock file that names its holder: one writer per output, taken over once its holder is gone.

    Use as a context manager around a run's writing. A live holder on this host, or any holder on another host,
    makes [`acquire`] raise an [`OutputLockedError`] naming it; a holder whose process has ended (a killed run) is
    replaced.
    """

    def __init__(self, output: str | PathLike) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.held = False

    def acquire(self) -> OutputLock:
        make_folder(self.path.parent)
        holder = _holder_record()
        for _ in range(3):
            if self._create(holder):
                self.held = True
                return self
            current = self.holder()
            if current is not None and _holder_alive(current):
                raise OutputLockedError(
                    f"{self.output} is being written by another run (pid {current.get('pid')} on "
                    f"{current.get('host')}, since {current.get('started')}; lock {self.path}). Wait for it, or "
                    f"write elsewhere; if that run is gone (another machine), remove {self.path}"
                )
            _remove(self.path)  # its holder has ended: take the lock over
        raise OutputLockedError(f"could not take the lock {self.path} of {self.output}: other runs keep taking it")

    def release(self) -> None:
        if self.held:
            _remove(self.path)
            self.held = False

    def holder(self) -> dict[str, Any] | None:
        """The holder recorded in the lock file (None when there is none, or it is unreadable)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _create(self, holder: dict[str, Any]) -> bool:
        """Create the lock file whole (written aside, then hard-linked into place: link fails if it exists)."""
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        try:
            aside.write_text(json.dumps(holder), encoding="utf-8")
            os.link(aside, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            raise OutputError(self.path, error) from error
        finally:
            _remove(aside)


def _holder_record() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process that holds a lock still runs (assumed, for a holder on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = holder.get("process_start")
    return start is None or start == _process_start(pid)  # a reused pid is another process


def _process_start(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


# ---------------------------------------------------------------------------------------------------------------------
# File system helpers
# ---------------------------------------------------------------------------------------------------------------------


def _nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of `folder` has less than `margin` bytes left (why a write failed silently)."""
    try:
        status = os.statvfs(folder)
    except OSError:
        return False
    return status.f_bavail * status.f_frsize < margin


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    """Remove a file or folder if it is there (best effort: a vanished folder is not an error here)."""
    with suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
