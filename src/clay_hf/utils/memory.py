"""Host memory of CPU training: give freed activation memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util

import torch
from transformers.utils.logging import get_logger

logger = get_logger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's <malloc.h>
GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024


def fix_malloc_mmap_threshold(threshold_bytes: int = GLIBC_DEFAULT_MMAP_THRESHOLD) -> bool:
    """Serve every allocation of `threshold_bytes` or more with its own mmap, returned to the OS when freed.

    PyTorch's CPU tensors come from malloc. glibc raises its mmap threshold each time such a block is freed (up to
    32 MiB), so after the first training step activation-sized tensors come from the heap instead, where freed
    memory fragments and stays resident: for `small` at batch 4 the resident set peaks about 0.6 GiB above what is
    alive, and stays ~2 GiB above it between steps. Fixing the threshold (which also switches off that dynamic raise)
    keeps the resident set at what is alive. Same as `MALLOC_MMAP_THRESHOLD_=131072` in the environment.

    Returns whether it took effect: False where the C library is not glibc.
    """
    libc_name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("No glibc mallopt here; the malloc mmap threshold is left as it is.")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1


def configure_training_malloc(device: torch.device, threshold_bytes: int) -> bool:
    """What CPU training does (`scripts/pretrain.py`, the training benchmark): fix the threshold when training on
    the CPU and `threshold_bytes` > 0; 0 keeps glibc's dynamic threshold. Returns whether it was fixed."""
    return device.type == "cpu" and threshold_bytes > 0 and fix_malloc_mmap_threshold(threshold_bytes)
