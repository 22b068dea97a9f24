"""Measuring Clay: an analytic FLOP count of the model, the machine's matmul peak, and timed runs.

Model FLOP utilisation (MFU) = model FLOPs per second / the same run's measured matmul peak. Model FLOPs count
the matrix multiplications of the architecture (2 per multiply-add); a training step is 3× its forward
(backward ≈ 2× forward). Recomputation under gradient checkpointing is not counted, as is customary for MFU.
"""

from __future__ import annotations

import contextlib
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

from .configuration_clay import ClayConfig
from .memory import GLIBC_DEFAULT_MMAP_THRESHOLD, configure_training_malloc
from .modeling_clay import ClayForMaskedImageModeling, ClayModel

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


def encoder_flops(config: ClayConfig, image_size: int, mask_ratio: float = 0.0) -> int:
    """Forward FLOPs of the encoder for one chip: patch embedding of every group-patch, then the transformer on
    the kept tokens and the two metadata tokens."""
    num_patches = (image_size // config.patch_size) ** 2
    total_tokens = config.num_groups * num_patches
    kept = total_tokens - int(mask_ratio * total_tokens)
    patch_embedding = 2 * num_patches * config.num_channels * config.patch_size**2 * config.hidden_size
    return patch_embedding + transformer_flops(
        kept + 2,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.head_dim,
        config.intermediate_size,
    )


def pretraining_flops(config: ClayConfig, image_size: int, mask_ratio: float) -> int:
    """Forward FLOPs of ClayForMaskedImageModeling for one chip (encoder on kept tokens, decoder on all)."""
    num_patches = (image_size // config.patch_size) ** 2
    total_tokens = config.num_groups * num_patches
    kept = total_tokens - int(mask_ratio * total_tokens)
    decoder = 2 * (kept + 2) * config.hidden_size * config.decoder_hidden_size  # encoder → decoder projection
    decoder += transformer_flops(
        total_tokens + 2,
        config.decoder_hidden_size,
        config.decoder_num_hidden_layers,
        config.decoder_num_attention_heads,
        config.decoder_head_dim,
        config.decoder_intermediate_size,
    )
    decoder += 2 * num_patches * config.decoder_hidden_size * config.patch_size**2 * config.num_channels  # heads
    return encoder_flops(config, image_size, mask_ratio) + decoder


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


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_inference(
    config: ClayConfig,
    attn: str,
    precision: str,
    batch_size: int,
    device: torch.device,
    peak: float,
    repeats: int,
    compiled: bool = False,
) -> RunResult:
    """Encoder embeddings of whole chips (no masking) under `torch.no_grad`; `compiled` uses `torch.compile`
    (its compilation happens in the untimed warm-up call)."""
    config._attn_implementation = attn
    model = ClayModel(config).to(device).eval()
    if compiled:
        model = torch.compile(model)
    inputs = _inputs(config, batch_size, device)
    with torch.no_grad(), autocast_context(device, precision):
        # Two untimed calls when compiled: the first fills the encoding cache, which the second compiles around.
        seconds = time_call(lambda: model(**inputs), device, warmup=2 if compiled else 1, repeats=repeats)
    flops = encoder_flops(config, config.image_size) * batch_size
    return _result("inference", attn, precision, False, batch_size, seconds, flops, peak, device, compiled)


def run_train_step(
    config: ClayConfig,
    attn: str,
    precision: str,
    checkpointing: bool,
    batch_size: int,
    device: torch.device,
    peak: float,
    repeats: int,
    malloc_mmap_threshold: int = GLIBC_DEFAULT_MMAP_THRESHOLD,
) -> RunResult:
    """One optimizer step of pretraining at the config's mask ratio: forward, backward, AdamW. Timed after two
    warm-up steps, so that AdamW's state exists and the peak memory is that of a steady step. On the CPU, glibc's
    mmap threshold is fixed as `scripts/pretrain.py` fixes it (0 keeps glibc's dynamic threshold)."""
    configure_training_malloc(device, malloc_mmap_threshold)
    config._attn_implementation = attn
    model = ClayForMaskedImageModeling(config).to(device).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), fused=device.type in FUSED_ADAMW_DEVICES
    )  # as scripts/pretrain.py
    inputs = _inputs(config, batch_size, device)

    def step() -> None:
        with autocast_context(device, precision):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_call(step, device, warmup=2, repeats=repeats)
    flops = 3 * pretraining_flops(config, config.image_size, config.mask_ratio) * batch_size
    return _result("train_step", attn, precision, checkpointing, batch_size, seconds, flops, peak, device)


def _inputs(config: ClayConfig, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    size = config.image_size
    return {
        "pixel_values": torch.randn(batch_size, config.num_channels, size, size, device=device),
        "timestep": torch.rand(batch_size, 3, device=device),  # in the range of the v0 encodings
        "latlon": torch.rand(batch_size, 2, device=device),
    }


def _result(task, attn, precision, checkpointing, batch_size, seconds, flops, peak, device, compiled=False):
    achieved = flops / seconds
    return RunResult(
        task=task,
        compiled=compiled,
        attn_implementation=attn,
        precision=precision,
        gradient_checkpointing=checkpointing,
        batch_size=batch_size,
        seconds=round(seconds, 4),
        chips_per_second=round(batch_size / seconds, 3),
        model_tflops_per_second=round(achieved / 1e12, 4),
        mfu=round(achieved / peak, 4),
        matmul_peak_tflops=round(peak / 1e12, 4),
        peak_memory_gib=round(peak_memory_bytes(device) / 2**30, 3),
    )


__all__ = [
    "RunResult",
    "call_seconds",
    "encoder_flops",
    "latency_ms",
    "machine_description",
    "matmul_peak",
    "pretraining_flops",
    "run_inference",
    "run_train_step",
    "time_call",
    "transformer_flops",
    "write_results",
]
