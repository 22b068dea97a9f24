"""The fine-tuning fields of `ClayConfig`: backbone outputs, segmentation head, losses.

They live in this mixin so that `configuration_clay.py` stays about the encoder and decoder; `ClayConfig` inherits
it and calls [`ClayTaskConfigMixin._init_task_fields`] with its keyword arguments.
"""

from __future__ import annotations

from typing import Any

from transformers.backbone_utils import BackboneConfigMixin

FEATURE_FUSIONS = ("mean", "concat")
DECODE_HEAD_TYPES = ("upernet", "fcn")

#: The task fields, their defaults and meaning (documented in `ClayConfig`).
TASK_FIELD_DEFAULTS: dict[str, Any] = {
    "feature_fusion": "mean",  # band groups of a feature map: averaged (C = D) or concatenated (C = G·D)
    "decode_head_type": "upernet",  # "upernet" (neck → pyramid → UperNet) or "fcn" (conv → pixel shuffle)
    "neck_hidden_size": 256,  # channels of each pyramid level after the neck
    "decode_hidden_size": 256,  # channels inside the decode head
    "pool_scales": [1, 2, 3, 6],  # UperNet's pyramid pooling scales
    "ignore_index": 255,  # label value that is not scored (nodata, unlabelled)
    "dice_loss_weight": 0.0,  # weight of a soft Dice loss added to the cross-entropy (0 = off)
    "classifier_dropout_prob": 0.0,  # dropout before the classification head
}


def default_out_indices(num_hidden_layers: int) -> list[int]:
    """Four layers spread over the encoder, ending at the last (0-based block indices into `stage_names`).

    For the 12-layer `small` model these are [3, 5, 7, 11], the layers Clay's own segmentation heads read; for
    other depths the four are evenly spaced, fewer when the encoder has fewer than four layers.
    """
    if num_hidden_layers == 12:
        return [3, 5, 7, 11]
    return sorted({round((k + 1) * num_hidden_layers / 4) - 1 for k in range(4)} - {-1})


class ClayTaskConfigMixin(BackboneConfigMixin):
    """`out_indices` / `out_features` over `stage_names` ("stage1" … "stageN", the outputs of the N encoder blocks)
    and the task fields of [`TASK_FIELD_DEFAULTS`]."""

    num_hidden_layers: int

    @property
    def stage_names(self) -> list[str]:
        return [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]

    def _init_task_fields(self, kwargs: dict[str, Any]) -> None:
        """Pop the task fields from `kwargs` (the config's keyword arguments) and set them; call after
        `num_hidden_layers` is set."""
        for name, default in TASK_FIELD_DEFAULTS.items():
            value = kwargs.pop(name, default)
            setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)
        out_indices, out_features = kwargs.pop("out_indices", None), kwargs.pop("out_features", None)
        if out_indices is None and out_features is None:
            out_indices = default_out_indices(self.num_hidden_layers)
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        self._validate_task_fields()

    def _validate_task_fields(self) -> None:
        if self.feature_fusion not in FEATURE_FUSIONS:
            raise ValueError(f"feature_fusion must be one of {FEATURE_FUSIONS}, got {self.feature_fusion!r}.")
        if self.decode_head_type not in DECODE_HEAD_TYPES:
            raise ValueError(f"decode_head_type must be one of {DECODE_HEAD_TYPES}, got {self.decode_head_type!r}.")
        if self.dice_loss_weight < 0:
            raise ValueError(f"dice_loss_weight must be ≥ 0, got {self.dice_loss_weight}.")


__all__ = ["DECODE_HEAD_TYPES", "FEATURE_FUSIONS", "TASK_FIELD_DEFAULTS", "ClayTaskConfigMixin", "default_out_indices"]
