"""Fixing glibc's mmap threshold gives freed activation-sized tensors back to the OS (CPU training)."""

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from clay_hf.utils.memory import configure_training_malloc

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from clay_hf.utils.memory import configure_training_malloc

    def resident_mib():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    if sys.argv[1] == "fixed":
        assert configure_training_malloc(torch.device("cpu"), 128 * 1024)
    torch.ones(2**22)  # a 16 MiB block, freed at once: glibc's dynamic threshold rises to 16 MiB
    before = resident_mib()
    blocks = [torch.ones(2**20) for _ in range(64)]  # 64 × 4 MiB
    last = blocks[-1]
    del blocks  # all freed but the last, which on the heap pins the memory below it
    print(resident_mib() - before)
    """
)


def resident_growth_mib(*modes: str) -> list[float]:
    """The growth in each mode, each in a fresh process of its own, all started at once (each mostly imports torch)."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for mode in modes
    ]
    growth = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        growth.append(float(out.strip()))
    return growth


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_freed_tensors_leave_the_resident_set_once_the_threshold_is_fixed():
    dynamic, fixed = resident_growth_mib("dynamic", "fixed")
    assert dynamic > 128  # glibc's default keeps the freed 252 MiB resident
    assert fixed < 32  # each block was its own mmap, unmapped when freed


def test_training_malloc_is_left_alone_on_a_gpu_or_at_threshold_zero():
    assert not configure_training_malloc(torch.device("cuda"), 128 * 1024)
    assert not configure_training_malloc(torch.device("cpu"), 0)
