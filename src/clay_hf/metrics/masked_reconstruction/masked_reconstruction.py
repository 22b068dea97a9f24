"""Masked reconstruction error of a Clay masked autoencoder, in total and per band group.

The arithmetic is `clay_hf.modeling_clay.clay_group_error_sums`, the same function the training loop uses; the
total equals the v0 loss of the same predictions, references and masks.
"""

import datasets
import evaluate
import numpy as np
import torch

from clay_hf.configuration_clay import CLAY_V0_BAND_GROUPS
from clay_hf.modeling_clay import clay_group_error_sums

_DESCRIPTION = """
Masked mean squared error of a Clay reconstruction: for each band group, the per-patch squared error averaged over
the group's bands, over the masked patches of that group; `masked_mse` is the v0 loss (all groups' errors over all
masked tokens).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per chip, the reconstruction (C, L, P·P) — `ClayForMaskedImageModeling` logits.
    references: per chip, the normalised pixels (C, H, W).
    masks: per chip, the mask (G·L,), 1 = masked.
    band_groups: ordered `[name, [band indices]]` pairs (default: the six v0 groups).
    patch_size: side of a patch in pixels (default: 32).
Returns:
    masked_mse: the v0 loss; masked_mse_<group>: each group's masked MSE (absent for a group with nothing masked).
"""

_CITATION = """
@software{clay_v0,
  title = {Clay Foundation Model},
  author = {{Clay Foundation}},
  year = {2024},
  url = {https://github.com/Clay-foundation/model}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MaskedReconstruction(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32")))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32")))),
                    "masks": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, predictions, references, masks, band_groups=None, patch_size=32):
        band_groups = band_groups or CLAY_V0_BAND_GROUPS
        logits = torch.as_tensor(np.asarray(predictions, dtype=np.float32))
        pixels = torch.as_tensor(np.asarray(references, dtype=np.float32))
        mask = torch.as_tensor(np.asarray(masks, dtype=np.float32))
        sums, counts = clay_group_error_sums(pixels, logits, mask, band_groups, patch_size)
        result = {"masked_mse": float(sums.sum() / counts.sum())}
        for (name, _), total, count in zip(band_groups, sums, counts, strict=True):
            if count > 0:
                result[f"masked_mse_{name}"] = float(total / count)
        return result
