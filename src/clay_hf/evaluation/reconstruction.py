"""Masked reconstruction error of a Clay model on a chip set → `eval_results.json` (read by the model card)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from transformers.utils.logging import get_logger

from ..data.chips import ChipLayout, chip_file_name
from ..data.dataset import chip_dataloader, drop_nonfinite_chips, model_inputs
from ..data.sources import load_chip_dataset
from ..models.clay.configuration_clay import ClayConfig
from ..models.clay.image_processing_clay import ClayImageProcessor, load_image_processor
from ..models.clay.modeling_clay import (
    ClayForMaskedImageModeling,
    ClayForMaskedImageModelingOutput,
    clay_group_error_sums,
)
from ..utils.model_source import ModelSourceError, from_pretrained_checked
from ..utils.outputs import make_folder, write_text

logger = get_logger(__name__)

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
    """The pretraining model (encoder and decoder) and its processor. A folder without the decoder's weights (an
    encoder saved alone) is refused: a decoder initialised at random would reconstruct noise, silently."""
    model, loading = from_pretrained_checked(ClayForMaskedImageModeling, model_name_or_path, output_loading_info=True)
    missing = sorted(loading["missing_keys"])
    if missing:
        shown = ", ".join(missing[:3]) + (f", … ({len(missing)} in all)" if len(missing) > 3 else "")
        raise ModelSourceError(
            f"{model_name_or_path}: not a pretraining model (encoder and decoder): it lacks {shown}. "
            "Reconstructions need the model saved by pretrain.py (ClayForMaskedImageModeling)."
        )
    model = model.to(device).eval()
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


def chip_reconstruction_errors(
    model: ClayForMaskedImageModeling, inputs: dict[str, torch.Tensor], source_urls: Sequence[str], seed: int
) -> torch.Tensor:
    """(B,) each chip's masked reconstruction error: the v0 loss of the chip alone, under `evaluate.py`'s random
    masking (the chip's noise from `seed` and its file name), so the same chip gets the same number in every run."""
    config = model.config
    noise = masking_noise(source_urls, inputs["pixel_values"], config, "random", seed)
    outputs = model(**inputs, noise=noise)
    errors = []
    for chip in range(len(source_urls)):
        sums, counts = clay_group_error_sums(
            inputs["pixel_values"][chip : chip + 1], outputs.logits[chip : chip + 1], outputs.mask[chip : chip + 1],
            config.band_groups, config.patch_size,
        )  # fmt: skip
        errors.append(sums.sum() / counts.sum())
    return torch.stack(errors).float()


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


def first_chips(
    pixel_values: torch.Tensor, outputs: ClayForMaskedImageModelingOutput, count: int
) -> tuple[torch.Tensor, ClayForMaskedImageModelingOutput]:
    """The first `count` chips of a batch and their outputs (all of them if the batch holds no more)."""
    if count >= len(pixel_values):
        return pixel_values, outputs
    kept = ClayForMaskedImageModelingOutput(logits=outputs.logits[:count], mask=outputs.mask[:count])
    return pixel_values[:count], kept


def masked_error_totals(
    model: torch.nn.Module,
    config: ClayConfig,
    batches: Iterable[dict[str, Any]],
    processor: ClayImageProcessor,
    device: torch.device,
    masking: str = "random",
    seed: int = VALIDATION_MASKING_SEED,
    max_chips: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[MaskedErrorTotals, int, int]:
    """The one validation loop (`evaluate.py` and the training run's validation): masked errors of `batches`.

    Chips with non-finite pixels or reconstructions are dropped and counted; with `max_chips`, exactly the first
    `max_chips` good chips are measured. Returns the totals (of this process), the chips measured and the bad chips.
    """
    totals = MaskedErrorTotals(config, device)
    chips = bad = 0
    with torch.no_grad():
        for batch in batches:
            inputs = model_inputs(batch, processor, device, config.band_names)
            batch, inputs = drop_nonfinite_chips(batch, inputs)
            bad += batch["bad_chips"]
            if not batch["source_url"]:
                continue
            noise = masking_noise(batch["source_url"], inputs["pixel_values"], config, masking, seed)
            with autocast():
                outputs = model(**inputs, noise=noise)
            pixel_values, outputs, overflowed = finite_reconstructions(inputs["pixel_values"], outputs, batch)
            bad += overflowed
            if max_chips is not None:
                pixel_values, outputs = first_chips(pixel_values, outputs, max_chips - chips)
            totals.add(pixel_values, outputs)
            chips += len(pixel_values)
            if max_chips is not None and chips >= max_chips:
                break
    return totals, chips, bad


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
    fill_value: float | str | None = None,
) -> dict[str, Any]:
    """Masked MSE in total (the v0 loss over all masked tokens) and per band group (None: no masked token).

    Args:
        source: chips (a folder, glob, list file or list of paths).
        masking: "random" (default: per-chip noise from `seed`, as the training run's validation) or "v0" (v0's
            validation masking, which never masks the last band groups).
        max_chips: evaluate exactly this many good chips (the first ones).
        split: "validation" (default) or "train", the training run's hash split of the file names with
            `validation_fraction`, or "all" chips.
        fill_value: use chips with missing pixels filled ("mean" or a raw value); by default they are bad chips.

    Chips that do not fit the model (its bands by name, its image size), cannot be read, hold missing pixels (unless
    `fill_value`) or overflow inside the model are skipped, named in a warning and counted in `bad_chips_skipped`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if max_chips is not None and max_chips < 1:
        raise ValueError(f"max_chips must be at least 1, got {max_chips}.")
    config = model.config
    fill = None if fill_value is None else processor.fill_values(fill_value, config.band_names)
    layout = ChipLayout.for_model(config, fill_values=fill)
    dataset = load_chip_dataset(
        source, split=None if split == "all" else split, validation_fraction=validation_fraction, layout=layout
    )
    device = next(model.parameters()).device
    totals, chips, bad = masked_error_totals(
        model, config, chip_dataloader(dataset, batch_size), processor, device, masking, seed, max_chips
    )
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
        "fill_value": fill_value,
        "dataset": str(source),
    }


def write_eval_results(results: dict[str, Any], output_dir: str | PathLike) -> Path:
    """Write `eval_results.json` (read by the model card) into `output_dir`, atomically."""
    path = make_folder(output_dir) / EVAL_RESULTS_NAME
    return write_text(path, json.dumps(results, indent=2, default=str) + "\n")


__all__ = [
    "EVAL_RESULTS_NAME",
    "MASKINGS",
    "SPLITS",
    "VALIDATION_MASKING_SEED",
    "MaskedErrorTotals",
    "chip_masking_noise",
    "chip_reconstruction_errors",
    "evaluate_reconstruction",
    "load_pretraining_model",
    "masked_error_totals",
    "masking_description",
    "masking_noise",
    "write_eval_results",
]
