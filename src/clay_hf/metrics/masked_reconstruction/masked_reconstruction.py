"""Masked reconstruction error of a Clay masked autoencoder, in total and per band group.

The arithmetic is `clay_hf.models.clay.modeling_clay.clay_group_error_sums`, the same function the training loop uses; the
total equals the v0 loss of the same predictions, references and masks.
"""

import math

import datasets
import numpy as np
import torch

from clay_hf.metrics.base import ClayMetric
from clay_hf.models.clay.configuration_clay import CLAY_V0_BAND_GROUPS, CLAY_V0_BAND_NAMES, normalize_band_groups
from clay_hf.models.clay.modeling_clay import clay_group_error_sums


class MaskedReconstruction(ClayMetric):
    DESCRIPTION = """
Masked mean squared error of a Clay reconstruction: for each band group, the per-patch squared error averaged over
the group's bands, over the masked patches of that group; `masked_mse` is the v0 loss (all groups' errors over all
masked tokens).
"""
    KWARGS_DESCRIPTION = """
Args:
    predictions: per chip, the reconstruction (C, L, P·P) — `ClayForMaskedImageModeling` logits.
    references: per chip, the normalised pixels (C, H, W).
    masks: per chip, the mask (G·L,), 1 = masked.
    band_groups: ordered `[name, [band indices]]` pairs (default: the six v0 groups, for 13-band chips).
    patch_size: side of a patch in pixels (default: read from the shapes of predictions and references; given, it
        must agree with them).
Returns (the keys of `evaluate.py`'s eval_results.json):
    masked_mse: the v0 loss (None if nothing was masked).
    masked_mse_per_group: {group: masked MSE}, every group, None for a group with no masked patch (not measured).
"""
    CITATION = """
@software{clay_v0,
  title = {Clay Foundation Model},
  author = {{Clay Foundation}},
  year = {2024},
  url = {https://github.com/Clay-foundation/model}
}
"""
    FEATURES = datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32")))),
            "references": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32")))),
            "masks": datasets.Sequence(datasets.Value("float32")),
        }
    )

    def _compute(self, predictions, references, masks, band_groups=None, patch_size=None):
        logits = torch.as_tensor(np.asarray(predictions, dtype=np.float32))  # (B, C, L, P·P)
        pixels = torch.as_tensor(np.asarray(references, dtype=np.float32))  # (B, C, H, W)
        mask = torch.as_tensor(np.asarray(masks, dtype=np.float32))  # (B, G·L)
        patch_size = _patch_size(logits.shape, pixels.shape, patch_size)
        band_groups = _band_groups(band_groups, pixels.shape[1])
        expected = len(band_groups) * logits.shape[2]
        if mask.shape[-1] != expected:
            raise ValueError(
                f"masks must have G·L = {len(band_groups)}·{logits.shape[2]} = {expected} values per chip, got {mask.shape[-1]}."
            )
        sums, counts = clay_group_error_sums(pixels, logits, mask, band_groups, patch_size)
        return {
            "masked_mse": float(sums.sum() / counts.sum()) if counts.sum() > 0 else None,
            "masked_mse_per_group": {
                name: float(total / count) if count > 0 else None
                for (name, _), total, count in zip(band_groups, sums, counts, strict=True)
            },
        }


def _patch_size(logits_shape: torch.Size, pixels_shape: torch.Size, given: int | None) -> int:
    """The patch side that makes (B, C, L, P·P) predictions of (B, C, H, W) references; `given` must agree."""
    if len(logits_shape) != 4 or len(pixels_shape) != 4:
        raise ValueError(
            f"predictions must be (C, L, P·P) and references (C, H, W) per chip; got {tuple(logits_shape[1:])} and "
            f"{tuple(pixels_shape[1:])}."
        )
    (_, channels, num_patches, area), (_, bands, height, width) = logits_shape, pixels_shape
    side = math.isqrt(area)
    fits = side * side == area and channels == bands and height % side == 0 and width % side == 0
    if not fits or (height // side) * (width // side) != num_patches:
        raise ValueError(
            f"predictions {tuple(logits_shape[1:])} (C, L, P·P) do not match references {tuple(pixels_shape[1:])} "
            "(C, H, W): expected the same C, a square P·P, and L = (H/P)·(W/P)."
        )
    if given is not None and given != side:
        raise ValueError(f"patch_size={given}, but the predictions hold patches of {side}×{side} pixels.")
    return side


def _band_groups(band_groups, num_bands: int):
    if band_groups is not None:
        return normalize_band_groups(band_groups)
    if num_bands != len(CLAY_V0_BAND_NAMES):
        raise ValueError(
            f"references have {num_bands} bands, not the v0 13: pass band_groups (e.g. config.band_groups)."
        )
    return CLAY_V0_BAND_GROUPS
