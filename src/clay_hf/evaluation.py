"""Masked reconstruction error of a Clay model on a chip set → `eval_results.json` (read by the model card)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .configuration_clay import ClayConfig
from .data.chips import chip_file_name
from .data.dataset import chip_dataloader, model_inputs
from .data.sources import load_chip_dataset
from .image_processing_clay import ClayImageProcessor, load_image_processor
from .model_source import from_pretrained_checked
from .modeling_clay import ClayForMaskedImageModeling, ClayForMaskedImageModelingOutput, clay_group_error_sums

EVAL_RESULTS_NAME = "eval_results.json"
#: Masking schemes: "random" (each chip's own noise from a fixed seed and its file name; every group is masked at
#: the same rate on average) and "v0" (v0's validation masking: eval mode, no shuffle, so the first tokens in group
#: order are masked and the last groups never are).
MASKINGS = ("random", "v0")
SPLITS = ("validation", "train", "all")
#: The seed of the training run's validation masking, and `evaluate.py`'s default: the same chips get the same masks.
VALIDATION_MASKING_SEED = 0


def load_pretraining_model(
    model_name_or_path: str, device: str | torch.device = "cpu"
) -> tuple[ClayForMaskedImageModeling, ClayImageProcessor]:
    model = from_pretrained_checked(ClayForMaskedImageModeling, model_name_or_path).to(device).eval()
    return model, load_image_processor(model_name_or_path, model.config.band_names)


def chip_masking_noise(
    source_urls: Sequence[str], num_tokens: int, seed: int = VALIDATION_MASKING_SEED
) -> torch.Tensor:
    """(B, num_tokens) uniform noise, each row from `seed` and the chip's file NAME (as the train/validation split
    reads it): a chip gets the same mask in every run, batch, rank and storage place (the smallest noise is masked,
    the v0 convention)."""
    rows = []
    for url in source_urls:
        digest = hashlib.sha256(f"{seed}:{chip_file_name(url)}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
        rows.append(torch.rand(num_tokens, generator=generator))
    return torch.stack(rows)


def masking_noise(
    source_urls: Sequence[str], pixel_values: torch.Tensor, config: ClayConfig, masking: str, seed: int
) -> torch.Tensor | None:
    """The noise for `masking` ("random": [`chip_masking_noise`]; "v0": None, the model's eval-mode masking)."""
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}.")
    if masking == "v0":
        return None
    height, width = (size // config.patch_size for size in pixel_values.shape[-2:])
    return chip_masking_noise(source_urls, config.num_groups * height * width, seed).to(pixel_values.device)


def masking_description(masking: str, seed: int | None) -> str:
    return f"random, seed {seed}" if masking == "random" else "v0 validation (eval mode, no shuffle)"


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

    def per_group(self) -> dict[str, float | None]:
        """Every group's masked MSE; None for a group with no masked token (not measured), never left out."""
        return {
            name: float(self.sums[i] / self.counts[i]) if self.counts[i] > 0 else None
            for i, name in enumerate(self.config.group_names)
        }


def evaluate_reconstruction(
    model: ClayForMaskedImageModeling,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    batch_size: int = 8,
    masking: str = "random",
    seed: int = VALIDATION_MASKING_SEED,
    max_chips: int | None = None,
    split: str = "validation",
    validation_fraction: float = 0.2,
) -> dict[str, Any]:
    """Masked MSE in total (the v0 loss over all masked tokens) and per band group (None: no masked token).

    Args:
        source: chips (a folder, glob, list file or list of paths).
        masking: "random" (default: per-chip noise from `seed`, as the training run's validation) or "v0" (v0's
            validation masking, which never masks the last band groups).
        max_chips: evaluate exactly this many readable chips (the first ones).
        split: "validation" (default) or "train", the training run's hash split of the file names with
            `validation_fraction`, or "all" chips.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if max_chips is not None and max_chips < 1:
        raise ValueError(f"max_chips must be at least 1, got {max_chips}.")
    device = next(model.parameters()).device
    config = model.config
    totals = MaskedErrorTotals(config, device)
    chips = bad = 0
    dataset = load_chip_dataset(
        source, split=None if split == "all" else split, validation_fraction=validation_fraction
    )
    if max_chips is not None:
        dataset = dataset.take(max_chips)
    with torch.no_grad():
        for batch in chip_dataloader(dataset, batch_size):
            bad += batch["bad_chips"]
            inputs = model_inputs(batch, processor, device)
            noise = masking_noise(batch["source_url"], inputs["pixel_values"], config, masking, seed)
            totals.add(inputs["pixel_values"], model(**inputs, noise=noise))
            chips += len(batch["source_url"])
    return {
        "masked_mse": totals.masked_mse(),
        "masked_mse_per_group": totals.per_group(),
        "num_chips": chips,
        "bad_chips_skipped": bad,
        "masking": masking,
        "masking_seed": seed if masking == "random" else None,
        "mask_ratio": config.mask_ratio,
        "split": split,
        "validation_fraction": validation_fraction,
        "dataset": str(source),
    }


def write_eval_results(results: dict[str, Any], output_dir: str | PathLike) -> Path:
    path = Path(output_dir) / EVAL_RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


__all__ = [
    "EVAL_RESULTS_NAME",
    "MASKINGS",
    "SPLITS",
    "VALIDATION_MASKING_SEED",
    "MaskedErrorTotals",
    "chip_masking_noise",
    "evaluate_reconstruction",
    "load_pretraining_model",
    "masking_description",
    "masking_noise",
    "write_eval_results",
]
