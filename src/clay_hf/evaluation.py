"""Masked reconstruction error of a Clay model on a chip set → `eval_results.json` (read by the model card)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .configuration_clay import ClayConfig
from .data.chips import ChipLayout
from .data.dataset import chip_dataloader, drop_nonfinite_chips, model_inputs
from .data.sources import load_chip_dataset
from .image_processing_clay import ClayImageProcessor, load_image_processor
from .modeling_clay import ClayForMaskedImageModeling, ClayForMaskedImageModelingOutput, clay_group_error_sums

logger = logging.getLogger(__name__)

EVAL_RESULTS_NAME = "eval_results.json"


def load_pretraining_model(
    model_name_or_path: str, device: str | torch.device = "cpu"
) -> tuple[ClayForMaskedImageModeling, ClayImageProcessor]:
    model = ClayForMaskedImageModeling.from_pretrained(model_name_or_path).to(device).eval()
    return model, load_image_processor(model_name_or_path, model.config.band_names)


def masking_noise(batch_size: int, num_tokens: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """Random masking noise from `generator`, or None for v0 validation masking (eval mode, no shuffle)."""
    return None if generator is None else torch.rand(batch_size, num_tokens, generator=generator)


class MaskedErrorTotals:
    """Running per-group sums of masked errors and masked-token counts ([`clay_group_error_sums`]): they add up
    exactly across batches and ranks, so the training loop's validation and `evaluate.py` report the same numbers."""

    def __init__(self, config: ClayConfig, device: torch.device | None = None) -> None:
        self.config = config
        self.sums = torch.zeros(config.num_groups, dtype=torch.float64, device=device)
        self.counts = torch.zeros_like(self.sums)

    def add(self, pixel_values: torch.Tensor, outputs: ClayForMaskedImageModelingOutput) -> None:
        sums, counts = clay_group_error_sums(
            pixel_values, outputs.logits, outputs.mask, self.config.band_groups, self.config.patch_size
        )
        self.sums += sums.double()
        self.counts += counts.double()

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the totals over processes with `reduce_sum` (e.g. `accelerator.reduce(…, "sum")`)."""
        self.sums, self.counts = reduce_sum(self.sums), reduce_sum(self.counts)

    def masked_mse(self) -> float | None:
        """The v0 loss over everything added: all groups' errors over all masked tokens."""
        return float(self.sums.sum() / self.counts.sum()) if self.counts.sum() > 0 else None

    def per_group(self) -> dict[str, float]:
        return {
            name: float(self.sums[i] / self.counts[i])
            for i, name in enumerate(self.config.group_names)
            if self.counts[i] > 0
        }


def finite_reconstructions(
    pixel_values: torch.Tensor, outputs: ClayForMaskedImageModelingOutput, batch: dict[str, Any]
) -> tuple[torch.Tensor, ClayForMaskedImageModelingOutput, int]:
    """(pixels, outputs) of the chips whose reconstruction is finite, and how many were dropped (each named in a
    warning): a chip whose values overflow inside the model never turns the results non-finite."""
    finite = torch.isfinite(outputs.logits).flatten(1).all(dim=1)  # (B,)
    if bool(finite.all()):
        return pixel_values, outputs, 0
    for url in (url for url, ok in zip(batch["source_url"], finite.tolist(), strict=True) if not ok):
        logger.warning("skipped %s: non-finite reconstruction", url)
    kept = ClayForMaskedImageModelingOutput(logits=outputs.logits[finite], mask=outputs.mask[finite])
    return pixel_values[finite], kept, int((~finite).sum())


def evaluate_reconstruction(
    model: ClayForMaskedImageModeling,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    batch_size: int = 8,
    seed: int | None = None,
    max_chips: int | None = None,
    fill_value: float | str | None = None,
) -> dict[str, Any]:
    """Masked MSE in total (the v0 loss over all masked tokens) and per band group.

    `seed=None` masks as v0 validation did (eval mode: the first 75% of tokens, group-major); a seed masks
    randomly, reproducibly. Chips that do not fit the model (its bands by name, its image size) or hold missing
    pixels (unless `fill_value` is 'mean' or a raw value) are skipped and counted in `bad_chips_skipped`.
    """
    device = next(model.parameters()).device
    config = model.config
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    totals = MaskedErrorTotals(config, device)
    chips = bad = 0
    fill = None if fill_value is None else processor.fill_values(fill_value, config.band_names)
    layout = ChipLayout.for_model(config, fill_values=fill)
    loader = chip_dataloader(load_chip_dataset(source, layout=layout), batch_size)
    with torch.no_grad():
        for batch in loader:
            inputs = model_inputs(batch, processor, device, config.band_names)
            batch, inputs = drop_nonfinite_chips(batch, inputs)
            bad += batch["bad_chips"]
            if not batch["source_url"]:
                continue
            height, width = (size // config.patch_size for size in inputs["pixel_values"].shape[-2:])
            noise = masking_noise(len(batch["source_url"]), config.num_groups * height * width, generator)
            outputs = model(**inputs, noise=None if noise is None else noise.to(device))
            pixel_values, outputs, overflowed = finite_reconstructions(inputs["pixel_values"], outputs, batch)
            bad += overflowed
            totals.add(pixel_values, outputs)
            chips += len(pixel_values)
            if max_chips is not None and chips >= max_chips:
                break
    results: dict[str, Any] = {
        "masked_mse": totals.masked_mse(),
        "masked_mse_per_group": totals.per_group(),
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


__all__ = [
    "EVAL_RESULTS_NAME",
    "MaskedErrorTotals",
    "evaluate_reconstruction",
    "load_pretraining_model",
    "write_eval_results",
]
