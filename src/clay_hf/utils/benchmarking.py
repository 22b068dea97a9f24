"""Measuring Clay: an analytic FLOP count of the model, the machine's matmul peak, and timed runs.

Model FLOP utilisation (MFU) = model FLOPs per second / the same run's measured matmul peak. Model FLOPs count
the matrix multiplications of the architecture (2 per multiply-add); a training step is 3× its forward
(backward ≈ 2× forward). Recomputation under gradient checkpointing is not counted, as is customary for MFU.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

# Devices whose fused AdamW kernel the training step uses: one pass over each parameter's memory instead of about ten
# elementwise ops (measured on a 2-core CPU: the plain AdamW step of `small` took a tenth of the training step).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def transformer_flops(tokens: int, width: int, layers: int, heads: int, head_dim: int, intermediate: int) -> int:
    """Forward FLOPs of one sequence through a pre-norm transformer stack (matmuls only)."""
    inner = heads * head_dim
    per_layer = 2 * tokens * width * 3 * inner  # qkv projection
    per_layer += 2 * 2 * tokens * tokens * inner  # q·kᵀ and attention·v
    per_layer += 2 * tokens * inner * width  # output projection
    per_layer += 2 * 2 * tokens * width * intermediate  # MLP
    return layers * per_layer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3) -> float:
    """Median seconds of `fn()` after `warmup` calls."""
    times = call_seconds(fn, device, warmup, repeats)
    return sorted(times)[len(times) // 2]


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median and 95th percentile, in milliseconds, of per-call seconds."""
    return {
        "latency_ms_median": 1000 * float(np.median(seconds)),
        "latency_ms_p95": 1000 * float(np.percentile(seconds, 95)),
    }


def write_results(results: dict, output: str | PathLike | None) -> None:
    """Print a benchmark's results as JSON, and write them to `output` (when given)."""
    text = json.dumps(results, indent=2)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")


def matmul_peak(device: torch.device, dtype: torch.dtype, target_seconds: float = 0.3) -> float:
    """Measured FLOP/s of a large square matmul in a linear layer's layout (x · Wᵀ, as every matmul of the model):
    the practical peak of this machine for `dtype`. The layout matters: on an AVX2 CPU a bf16 `a @ b` takes a
    generic path ~30× slower than `a @ b.T`, which oneDNN serves.

    The side is chosen from a 512×512 probe so that one product takes about `target_seconds` (CPUs without
    native bf16 run bf16 matmuls several times slower than fp32, and a fixed large size would take minutes). The median
    of five products, timed as the model is, so that the ratio of the two is fair.
    """

    def rate(size: int) -> float:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        return 2 * size**3 / time_call(lambda: torch.nn.functional.linear(a, b), device, warmup=1, repeats=5)

    probe = rate(512)
    size = int(512 * (target_seconds * probe / (2 * 512**3)) ** (1 / 3)) // 256 * 256
    size = min(max(size, 512), 16384 if device.type == "cuda" else 4096)
    return max(probe, rate(size)) if size != 512 else probe


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA's allocator peak on a GPU, the peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def machine_description(device: torch.device) -> dict[str, object]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": name,
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


@dataclass
class RunResult:
    task: str  # "inference" or "train_step"
    compiled: bool
    attn_implementation: str
    precision: str  # "fp32" or "bf16"
    gradient_checkpointing: bool
    batch_size: int
    seconds: float
    chips_per_second: float
    model_tflops_per_second: float
    mfu: float
    matmul_peak_tflops: float  # the peak the MFU is relative to
    peak_memory_gib: float

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = [
    "RunResult",
    "call_seconds",
    "latency_ms",
    "machine_description",
    "matmul_peak",
    "time_call",
    "transformer_flops",
    "write_results",
]
