"""Throughput of the Clay model: FLOPs of a configuration, a timed forward pass and a timed training step (the machine
description and timing helpers are in `clay_hf.utils.benchmarking`)."""

from __future__ import annotations

import contextlib

import torch

from ..utils.benchmarking import FUSED_ADAMW_DEVICES, RunResult, peak_memory_bytes, time_call, transformer_flops
from ..utils.memory import GLIBC_DEFAULT_MMAP_THRESHOLD, configure_training_malloc
from .clay.configuration_clay import ClayConfig
from .clay.modeling_clay import ClayForMaskedImageModeling, ClayModel


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


__all__ = ["encoder_flops", "pretraining_flops", "run_inference", "run_train_step"]
