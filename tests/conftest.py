"""Shared helpers: small Clay configs and the reference fixtures of the original v0 code."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
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


@pytest.fixture()
def small_disk(tmp_path):
    """A factory of folders on tiny file systems that fill up (tmpfs of `size_kib`), unmounted after the test.

    Where mounting is not allowed (not root, no tmpfs) the test is skipped; unit tests of the same contract patch
    writes to raise ENOSPC instead (tests/test_outputs.py).
    """
    mounted: list[Path] = []

    def make(size_kib: int) -> Path:
        mount_point = tmp_path / f"disk{len(mounted)}"
        mount_point.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip("mounting a small tmpfs is not allowed here")
        mounted.append(mount_point)
        return mount_point

    yield make
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
