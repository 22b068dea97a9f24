"""Masked reconstruction error of a Clay model on a chip set → `eval_results.json` (read by the model card)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .data.dataset import chip_dataloader, load_geotiff_dataset, resolve_sources
from .image_processing_clay import ClayImageProcessor, load_image_processor
from .modeling_clay import ClayForMaskedImageModeling, clay_group_error_sums

EVAL_RESULTS_NAME = "eval_results.json"


def load_pretraining_model(
    model_name_or_path: str, device: str | torch.device = "cpu"
) -> tuple[ClayForMaskedImageModeling, ClayImageProcessor]:
    model = ClayForMaskedImageModeling.from_pretrained(model_name_or_path).to(device).eval()
    return model, load_image_processor(model_name_or_path, model.config.band_names)


def masking_noise(batch_size: int, num_tokens: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """Random masking noise from `generator`, or None for v0 validation masking (eval mode, no shuffle)."""
    return None if generator is None else torch.rand(batch_size, num_tokens, generator=generator)


def evaluate_reconstruction(
    model: ClayForMaskedImageModeling,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    batch_size: int = 8,
    seed: int | None = None,
    max_chips: int | None = None,
) -> dict[str, Any]:
    """Masked MSE in total (the v0 loss over all masked tokens) and per band group.

    `seed=None` masks as v0 validation did (eval mode: the first 75% of tokens, group-major); a seed masks
    randomly, reproducibly.
    """
    device = next(model.parameters()).device
    config = model.config
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    sums = torch.zeros(config.num_groups, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    chips = bad = 0
    loader = chip_dataloader(load_geotiff_dataset(resolve_sources(source)), batch_size)
    with torch.no_grad():
        for batch in loader:
            bad += batch["bad_chips"]
            pixels = processor.normalize_tensor(batch["pixels"].to(device))
            height, width = (size // config.patch_size for size in pixels.shape[-2:])
            noise = masking_noise(len(pixels), config.num_groups * height * width, generator)
            outputs = model(
                pixels, batch["timestep"].to(device), batch["latlon"].to(device),
                noise=None if noise is None else noise.to(device),
            )  # fmt: skip
            group_sums, group_counts = clay_group_error_sums(
                pixels, outputs.logits, outputs.mask, config.band_groups, config.patch_size
            )
            sums += group_sums.double().cpu()
            counts += group_counts.double().cpu()
            chips += len(pixels)
            if max_chips is not None and chips >= max_chips:
                break
    results: dict[str, Any] = {
        "masked_mse": float(sums.sum() / counts.sum()) if counts.sum() > 0 else None,
        "masked_mse_per_group": {
            name: float(sums[i] / counts[i]) for i, name in enumerate(config.group_names) if counts[i] > 0
        },
        "num_chips": chips,
        "bad_chips_skipped": bad,
        "masking": "v0 validation (eval mode, no shuffle)" if seed is None else f"random, seed {seed}",
        "mask_ratio": config.mask_ratio,
        "dataset": str(source),
    }
    return results


def write_eval_results(results: dict[str, Any], output_dir: str | PathLike) -> Path:
    path = Path(output_dir) / EVAL_RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


__all__ = ["EVAL_RESULTS_NAME", "evaluate_reconstruction", "load_pretraining_model", "write_eval_results"]
