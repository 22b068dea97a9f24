"""Shared helpers: small Clay configs and the reference fixtures of the original v0 code."""

from __future__ import annotations

import builtins
import errno
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clay_hf import ClayConfig, ClayForMaskedImageModeling, ClayImageProcessor, convert_original_checkpoint
from clay_hf.testing_utils import toy_config

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CKPT = FIXTURES / "clay_v0_tiny.ckpt"


def small_config(**overrides) -> ClayConfig:
    """A fast 13-band, six-group config for tests (not the fixture's shape): the toy config the benchmarks use."""
    return toy_config(**overrides)


def save_pretraining_model(folder: Path, seed: int = 0) -> Path:
    """A small pretraining model (weights from `seed`) with the v0 processor, as a save_pretrained folder."""
    torch.manual_seed(seed)
    ClayForMaskedImageModeling(small_config()).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    return folder


def pretrain_in_process(args: list[str]) -> int:
    """`scripts/pretrain.py`'s `main(args)` in this process, on the CPU and one torch thread: what a single-process
    `accelerate launch` of the script runs, to the same weights, without its start-up (two Python processes importing
    torch, 10 s and more on a busy CPU). Its `error: …` line goes to stderr and `accelerator.print` to stdout, as
    from the script; its log messages go to the test's logging handlers (caplog) rather than to stderr. For runs
    whose test is not about processes (a reference run, a refusal, a resume from an intact checkpoint); kills, DDP,
    locks and full disks keep `accelerate launch`."""
    from accelerate.state import AcceleratorState, GradientState

    from clay_hf.commands.pretrain import main

    threads, use_cpu = torch.get_num_threads(), os.environ.get("ACCELERATE_USE_CPU")
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in a launch: bit for bit the same weights
    os.environ["ACCELERATE_USE_CPU"] = "1"
    # Accelerate's state is one per process: set up afresh, not inherited from (or left to) another test.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11 on torch ≥ 2.10
            return main(args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        torch.set_num_threads(threads)
        if use_cpu is None:
            os.environ.pop("ACCELERATE_USE_CPU")
        else:
            os.environ["ACCELERATE_USE_CPU"] = use_cpu


def start_pretraining(args: list[str], processes: int = 2) -> subprocess.Popen:
    """`accelerate launch scripts/pretrain.py ARGS` on `processes` CPU processes as test_pretrain's `launch` does it,
    without waiting for it, on a free port of its own: a reference run that goes on beside another launch (the
    reference run of a kill test beside the run that is killed). `finish_pretraining` waits for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    if processes > 1:
        command += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(port)]
    else:
        command += ["--num_processes", "1", "--cpu"]
    command += [str(Path(__file__).resolve().parents[1] / "scripts" / "pretrain.py"), *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish_pretraining(process: subprocess.Popen) -> None:
    """Wait for a run of `start_pretraining`; its output's tail on failure."""
    stdout, stderr = process.communicate(timeout=300)
    if process.returncode != 0:
        raise AssertionError(f"exit {process.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}")


def random_inputs(config: ClayConfig, batch_size: int = 2, size: int | None = None, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    size = size or config.image_size
    return {
        "pixel_values": torch.randn(batch_size, config.num_channels, size, size, generator=generator),
        # In the range of the v0 encodings: angles in [-π, π], sin(lat) in [-1, 1] (the model rejects raw values).
        "timestep": (torch.rand(batch_size, 3, generator=generator) * 2 - 1) * math.pi,
        "latlon": (torch.rand(batch_size, 2, generator=generator) * 2 - 1) * torch.tensor([1.0, math.pi]),
    }


@pytest.fixture()
def one_thread():
    """One torch thread for the test: tiny models on a shared CPU, where more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixture_meta() -> dict:
    return json.loads((FIXTURES / "clay_v0_tiny.json").read_text())


@pytest.fixture(scope="session")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "clay_v0_tiny.expected.safetensors")


@pytest.fixture()
def tiny_model():
    """The fixture checkpoint through the converter (its `model_size` is 'custom', so heads are given)."""
    return convert_original_checkpoint(TINY_CKPT, num_attention_heads=4, decoder_num_attention_heads=2)


#: Set to 1 to give tests that do not ask for a real file system the patched small disk even where tmpfs mounts.
PATCHED_DISK_ENV = "CLAY_TEST_PATCHED_DISK"
_BLOCK = 4096  # what a file's size is rounded up to, as tmpfs counts pages


class SmallDisks:
    """Folders on tiny file systems that fill up: a tmpfs of `size_kib` where mounting is allowed, otherwise (or
    with `CLAY_TEST_PATCHED_DISK=1`) a folder whose Python-level writes raise `OSError(ENOSPC)` once its files
    hold `size_kib` (patched in this process, and in the processes it forks: `open`/`io.open`/tarfile's open,
    `os.write`, shutil's copies; `os.statvfs` reports the folder's free space). A test whose writes are made in C
    (GDAL, Arrow, torch) or by a launched subprocess asks for `real=True`, skipped where mounting is not allowed.
    `resize` frees (or shrinks) a disk; removing files frees their space on either kind."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.monkeypatch = root, monkeypatch
        self.mounted: list[Path] = []
        self.patched: dict[Path, int] = {}  # folder → its size in bytes

    def __call__(self, size_kib: int, real: bool = False) -> Path:
        disk = self.root / f"disk{len(self.mounted) + len(self.patched)}"
        disk.mkdir()
        if not real and os.environ.get(PATCHED_DISK_ENV) == "1":
            return self._patch(disk, size_kib)
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)]
        if subprocess.run(command, capture_output=True).returncode == 0:
            self.mounted.append(disk)
            return disk
        if real:
            pytest.skip("mounting a small tmpfs is not allowed here")
        return self._patch(disk, size_kib)

    def resize(self, disk: Path, size_kib: int) -> None:
        if disk in self.patched:
            self.patched[disk] = size_kib * 1024
        else:
            subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(disk)], check=True)

    def unmount(self) -> None:
        for disk in self.mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)

    # --- the patched disk ---

    def _patch(self, disk: Path, size_kib: int) -> Path:
        if not self.patched:
            self._install()
        self.patched[disk.resolve()] = size_kib * 1024
        return disk.resolve()

    def disk_of(self, file: object) -> Path | None:
        """The patched disk that holds `file` (a path or an open descriptor), if any."""
        try:
            path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.path.abspath(file)
        except (OSError, TypeError):
            return None
        path = os.fsdecode(path)
        return next((disk for disk in self.patched if path == str(disk) or path.startswith(f"{disk}{os.sep}")), None)

    def free(self, disk: Path) -> int:
        used = sum(
            -(-os.lstat(os.path.join(folder, name)).st_size // _BLOCK) * _BLOCK
            for folder, _, names in os.walk(disk)
            for name in names
        )
        return self.patched[disk] - used

    def check(self, disk: Path, size: int) -> None:
        if size > self.free(disk):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _install(self) -> None:
        disks, real_open, real_write, real_statvfs = self, io.open, os.write, os.statvfs

        class BudgetFileIO(io.FileIO):
            def write(self, data) -> int:
                disks.check(self.disk, memoryview(data).nbytes)
                return super().write(data)

        def budget_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
                        opener=None):  # fmt: skip
            disk = disks.disk_of(file) if set(mode) & set("wax+") else None
            if disk is None:
                return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
            raw = BudgetFileIO(file, mode.replace("b", "").replace("t", ""), closefd=closefd, opener=opener)
            raw.disk = disk
            if "b" in mode and buffering == 0:
                return raw
            buffered = (io.BufferedRandom if "+" in mode else io.BufferedWriter)(raw)
            if "b" in mode:
                return buffered
            text = io.TextIOWrapper(buffered, encoding, errors, newline, line_buffering=buffering == 1)
            text.mode = mode
            return text

        def budget_write(fd: int, data) -> int:
            disk = disks.disk_of(fd)
            if disk is not None:
                disks.check(disk, memoryview(data).nbytes)
            return real_write(fd, data)

        def budget_statvfs(path):
            disk = disks.disk_of(path)
            if disk is None:
                return real_statvfs(path)
            blocks, free = disks.patched[disk] // _BLOCK, max(disks.free(disk), 0) // _BLOCK
            return os.statvfs_result((_BLOCK, _BLOCK, blocks, free, free, 1 << 20, 1 << 20, 1 << 20, 0, 255))

        for module, name in ((builtins, "open"), (io, "open"), (tarfile, "bltn_open")):
            self.monkeypatch.setattr(module, name, budget_open)
        self.monkeypatch.setattr(os, "write", budget_write)
        self.monkeypatch.setattr(os, "statvfs", budget_statvfs)
        self.monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies through `open`, not sendfile


@pytest.fixture()
def small_disk(tmp_path, monkeypatch):
    """A factory of folders on tiny file systems that fill up ([`SmallDisks`]): `small_disk(size_kib)` is a tmpfs,
    or a patched folder where mounting is not allowed; `small_disk(size_kib, real=True)` a tmpfs or a skip.
    `small_disk.resize(disk, size_kib)` frees space."""
    disks = SmallDisks(tmp_path, monkeypatch)
    yield disks
    disks.unmount()
