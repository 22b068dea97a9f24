"""Clay for downstream tasks: a backbone of feature maps, semantic segmentation and chip classification/regression.

Notation as in `modeling_clay.py`: B batch, C channels, H×W image, P patch side, h×w = H/P × W/P patch grid,
G band groups, D encoder width, K classes.

Every head keeps the encoder under the attribute `clay` with the key names of [`ClayModel`], so a pretraining
checkpoint (`clay.*` beside `decoder.*`) and an encoder-only folder (`embeddings.*`, `encoder.*`) both load into it
exactly; only the new parts are initialised, and loading says so in one line.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput, SemanticSegmenterOutput
from transformers.models.upernet.modeling_upernet import UperNetHead
from transformers.utils import ModelOutput
from transformers.utils.logging import get_logger

from .configuration_clay import ClayConfig
from .modeling_clay import ClayModel, ClayPreTrainedModel

logger = get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Loading from a pretraining or encoder folder: one line instead of a table of keys
# ---------------------------------------------------------------------------------------------------------------------


class _HeldRecords(logging.Filter):
    """Holds back transformers' loading-report table (re-emitted only when loading fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True


@contextmanager
def _held_load_report():
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    held = _HeldRecords()
    transformers_logger.addFilter(held)
    try:
        yield
    except Exception:
        transformers_logger.removeFilter(held)  # first: a record re-emitted through the filter would be held again
        for record in held.records:  # the details behind transformers' "look at the above report"
            transformers_logger.handle(record)
        raise
    finally:
        transformers_logger.removeFilter(held)


def _part_names(keys: set[str]) -> str:
    """'clay.encoder.layers.0.x', 'neck.levels.0.y' → 'clay.encoder, neck': where keys live, not every key."""
    parts = sorted({".".join(key.split(".")[:2]) if key.startswith("clay.") else key.split(".")[0] for key in keys})
    return ", ".join(parts)


class ClayLoadReportMixin:
    """`from_pretrained` that reports in one line what came from the checkpoint, what is new, what was dropped."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        return_info = kwargs.pop("output_loading_info", False)
        with _held_load_report():
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        model._log_loading(pretrained_model_name_or_path, info)
        return (model, info) if return_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info: Any) -> None:
        self._checkpoint_unexpected_keys = set(loading_info.unexpected_keys)  # before the ignore patterns apply
        super()._adjust_missing_and_unexpected_keys(loading_info)

    def _log_loading(self, source: Any, info: dict[str, Any]) -> None:
        missing = set(info["missing_keys"])
        mismatched = sorted(info.get("mismatched_keys") or ())  # (key, checkpoint shape, model shape)
        dropped = getattr(self, "_checkpoint_unexpected_keys", set())
        loaded = len(self.state_dict()) - len(missing) - len(mismatched)
        line = f"{type(self).__name__} from {source}: {loaded} tensors loaded"
        if missing:
            line += f"; initialised new: {_part_names(missing)} ({len(missing)} tensors)"
        if mismatched:
            sizes = ", ".join(f"{key} {tuple(saved)} → {tuple(new)}" for key, saved, new in mismatched)
            line += f"; re-initialised, their sizes differ from the checkpoint's (ignore_mismatched_sizes): {sizes}"
        if dropped:
            line += f"; not used from the checkpoint: {_part_names(dropped)} ({len(dropped)} tensors)"
        missing_encoder = {key for key in missing if key.startswith(("clay.", "embeddings.", "encoder."))}
        if missing_encoder:
            line += f". The ENCODER lacks {len(missing_encoder)} tensors, now random: is this a Clay checkpoint?"
        (logger.warning if missing or mismatched or missing_encoder else logger.info)(line)


# ---------------------------------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------------------------------


def tokens_to_feature_map(
    tokens: torch.Tensor, num_groups: int, height: int, width: int, fusion: str = "mean"
) -> torch.Tensor:
    """Encoder tokens (B, G·L + 2, D) → a feature map (B, D, h, w) with the groups averaged (`mean`), or
    (B, G·D, h, w) with the groups stacked along channels (`concat`, as v0's flood head did). The two metadata
    tokens are left out."""
    batch_size, _, dim = tokens.shape
    patches = tokens[:, :-2].reshape(batch_size, num_groups, height, width, dim)  # (B, G, h, w, D)
    if fusion == "mean":
        return patches.mean(dim=1).permute(0, 3, 1, 2)  # (B, D, h, w)
    return patches.permute(0, 1, 4, 2, 3).reshape(batch_size, num_groups * dim, height, width)  # (B, G·D, h, w)


class ClayBackbone(ClayLoadReportMixin, BackboneMixin, ClayModel):
    """The Clay encoder as a transformers backbone: feature maps (B, C, h, w) of the blocks in `config.out_indices`
    (stages "stage1" … "stageN" are the outputs of the N blocks; by default four, [3, 5, 7, 11] for `small`).

    C is D with `config.feature_fusion="mean"` (band groups averaged) or G·D with `"concat"`.
    """

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        width = config.hidden_size * (config.num_groups if config.feature_fusion == "concat" else 1)
        self.num_features = [width] * config.num_hidden_layers

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestep: torch.Tensor,
        latlon: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        r"""
        Args:
            pixel_values, timestep, latlon: as in [`ClayModel`] (nothing is masked).
        Returns:
            `BackboneOutput` with `feature_maps`, one (B, C, h, w) map per entry of `out_features`.
        """
        encoded = ClayModel.forward(  # not BackboneMixin.forward, which is abstract
            self,
            pixel_values,
            timestep,
            latlon,
            output_hidden_states=True,
            output_attentions=output_attentions,
            return_dict=True,
        )
        height, width = (size // self.config.patch_size for size in pixel_values.shape[-2:])
        feature_maps = tuple(
            tokens_to_feature_map(
                encoded.hidden_states[index + 1], self.config.num_groups, height, width, self.config.feature_fusion
            )
            for index in self.out_indices
        )
        wants_hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=encoded.hidden_states if wants_hidden else None,
            attentions=encoded.attentions,
        )
        return self._as_return_type(output, return_dict)


# ---------------------------------------------------------------------------------------------------------------------
# Segmentation: neck (single-scale maps → pyramid), UperNet or FCN head
# ---------------------------------------------------------------------------------------------------------------------


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least two channels: batch-size independent, so training with one chip
    per device works, also on the 1×1 map of UperNet's global pooling."""
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)


def pyramid_scales(num_levels: int) -> list[float]:
    """Resampling factor of each level, shallow to deep, as in ViTDet's simple pyramid: 4, 2, 1, 1/2 for four."""
    if num_levels == 1:
        return [1.0]
    return [2.0 ** (num_levels - 2 - level) for level in range(num_levels)]


def _rescale(channels: int, scale: float) -> nn.Module:
    """Transposed 2×2 convolutions up (×2 each), max pooling down, identity at 1."""
    if scale == 1:
        return nn.Identity()
    if scale < 1:
        return nn.MaxPool2d(kernel_size=round(1 / scale))
    steps: list[nn.Module] = []
    for step in range(round(math.log2(scale))):
        if step:
            steps += [group_norm(channels), nn.GELU()]
        steps.append(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
    return nn.Sequential(*steps)


class ClayFeaturePyramidNeck(nn.Module):
    """ViT feature maps of one scale (B, C, h, w) each → a pyramid: level i is projected to `neck_hidden_size`
    channels and resampled by [`pyramid_scales`] (4h, 2h, h, h/2 for four levels)."""

    def __init__(self, config: ClayConfig, in_channels: list[int]) -> None:
        super().__init__()
        width = config.neck_hidden_size
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, width, kernel_size=1), group_norm(width), _rescale(width, scale))
            for channels, scale in zip(in_channels, pyramid_scales(len(in_channels)), strict=True)
        )

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [level(features) for level, features in zip(self.levels, feature_maps, strict=True)]


def _batch_norm_to_group_norm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d of `module` for a GroupNorm of the same width (see [`group_norm`])."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, group_norm(child.num_features))
        else:
            _batch_norm_to_group_norm(child)
    return module


def upernet_head(config: ClayConfig, in_channels: list[int]) -> UperNetHead:
    """transformers' UperNet head (pyramid pooling + FPN fusion) over the neck's levels, with GroupNorm."""
    head_config = SimpleNamespace(
        pool_scales=list(config.pool_scales), hidden_size=config.decode_hidden_size, num_labels=config.num_labels
    )
    return _batch_norm_to_group_norm(UperNetHead(head_config, in_channels=in_channels))


class ClayFCNHead(nn.Module):
    """The light head: the feature maps stacked (B, n·C, h, w) → 3×3 conv → K·P² channels → pixel shuffle to
    (B, K, H, W), a learnt per-patch upsampling."""

    def __init__(self, config: ClayConfig, in_channels: list[int]) -> None:
        super().__init__()
        width = config.decode_hidden_size
        self.fuse = nn.Sequential(
            nn.Conv2d(sum(in_channels), width, kernel_size=3, padding=1), group_norm(width), nn.ReLU()
        )
        self.classifier = nn.Conv2d(width, config.num_labels * config.patch_size**2, kernel_size=1)
        self.upsample = nn.PixelShuffle(config.patch_size)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        fused = self.fuse(torch.cat(feature_maps, dim=1))  # (B, width, h, w)
        return self.upsample(self.classifier(fused))  # (B, K, H, W)


def check_segmentation_labels(labels: torch.Tensor, num_labels: int, ignore_index: int) -> None:
    """Class ids must be in 0 … K−1 or equal `ignore_index`; anything else is an error that names the values."""
    scored = labels != ignore_index
    bad = scored & ((labels < 0) | (labels >= num_labels))
    if bad.any():
        values = sorted(int(value) for value in labels[bad].unique()[:10])
        raise ValueError(
            f"labels hold values {values} outside the classes 0…{num_labels - 1}; set num_labels, or mark pixels "
            f"that are not scored with ignore_index={ignore_index}."
        )


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """1 − mean over classes of the soft Dice score of softmax(logits) (B, K, H, W) against labels (B, H, W), over
    the scored pixels only."""
    num_labels = logits.shape[1]
    probabilities = logits.float().softmax(dim=1) * scored[:, None]  # (B, K, H, W)
    targets = nn.functional.one_hot(labels.clamp(0, num_labels - 1).long(), num_labels).permute(0, 3, 1, 2)
    targets = targets.float() * scored[:, None]  # (B, K, H, W)
    intersection = (probabilities * targets).sum(dim=(0, 2, 3))  # (K,)
    total = probabilities.sum(dim=(0, 2, 3)) + targets.sum(dim=(0, 2, 3))  # (K,)
    return 1 - ((2 * intersection + 1.0) / (total + 1.0)).mean()


def semantic_segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, dice_loss_weight: float = 0.0
) -> torch.Tensor:
    """Cross-entropy over the pixels whose label is not `ignore_index` (+ `dice_loss_weight` × soft Dice).

    logits (B, K, H, W), labels (B, H, W). A batch with no scored pixel gives a zero loss (with a gradient path).
    """
    check_segmentation_labels(labels, logits.shape[1], ignore_index)
    scored = labels != ignore_index
    if not scored.any():
        return logits.sum() * 0.0
    loss = nn.functional.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index)
    if dice_loss_weight:
        loss = loss + dice_loss_weight * soft_dice_loss(logits, labels, scored)
    return loss


class ClayHeadsPreTrainedModel(ClayLoadReportMixin, ClayPreTrainedModel):
    """Shared by the task models: the forward pass (encoder → the model's head `_logits` → its `_loss`),
    initialisation of the new layer types and encoder freezing."""

    _can_compile_fullgraph = False  # labels are checked on the host
    # The losses are means over the batch, not sums over `num_items_in_batch`: `Trainer` must scale them for gradient
    # accumulation and devices itself (and passes no loss kwargs: `forward` takes none, an unknown one is a TypeError).
    accepts_loss_kwargs = False
    output_class: ClassVar[type[ModelOutput]]

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestep: torch.Tensor,
        latlon: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        r"""
        Args:
            pixel_values, timestep, latlon: as in [`ClayModel`].
            labels: the targets, as the model's class docstring says; with them, the output holds the `loss`.
        Returns:
            `output_class` (`SemanticSegmenterOutput`, `ImageClassifierOutput`) with `logits` and `loss`.
        """
        encoded = self._encode(
            pixel_values,
            timestep,
            latlon,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        logits = self._logits(encoded, pixel_values)
        loss = None if labels is None else self._loss(logits, labels)
        output = self.output_class(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        return self._as_return_type(output, return_dict)

    def _logits(self, encoded: ModelOutput, pixel_values: torch.Tensor) -> torch.Tensor:
        """The head: the encoder's output → logits."""
        raise NotImplementedError

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.ConvTranspose2d):
            init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def freeze_encoder(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the encoder: only the new parts train (a frozen backbone, linear probing)."""
        for parameter in self.clay.parameters():
            parameter.requires_grad_(not freeze)


class ClayForSemanticSegmentation(ClayHeadsPreTrainedModel):
    """[`ClayBackbone`] → [`ClayFeaturePyramidNeck`] → UperNet head (`decode_head_type="upernet"`), or the
    backbone → [`ClayFCNHead`] (`"fcn"`); logits (B, K, H, W) upsampled to the input size, cross-entropy over
    `labels` (B, H, W) of class ids other than `config.ignore_index` (plus soft Dice with `config.dice_loss_weight`).
    Returns a `SemanticSegmenterOutput`."""

    output_class = SemanticSegmenterOutput

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        self.clay = ClayBackbone(config)
        in_channels = self.clay.channels
        if config.decode_head_type == "upernet":
            self.neck = ClayFeaturePyramidNeck(config, in_channels)
            self.decode_head = upernet_head(config, [config.neck_hidden_size] * len(in_channels))
        else:
            self.neck = None
            self.decode_head = ClayFCNHead(config, in_channels)
        self.post_init()

    def _logits(self, encoded: BackboneOutput, pixel_values: torch.Tensor) -> torch.Tensor:
        features = encoded.feature_maps if self.neck is None else self.neck(encoded.feature_maps)
        logits = self.decode_head(features)  # (B, K, h', w')
        if logits.shape[-2:] != pixel_values.shape[-2:]:
            logits = nn.functional.interpolate(
                logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
            )  # (B, K, H, W)
        return logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the image size {tuple(logits.shape[-2:])}.")
        return semantic_segmentation_loss(logits, labels, self.config.ignore_index, self.config.dice_loss_weight)


# ---------------------------------------------------------------------------------------------------------------------
# Chip classification and regression
# ---------------------------------------------------------------------------------------------------------------------


def resolve_problem_type(config: ClayConfig, labels: torch.Tensor) -> str:
    """`config.problem_type`, or as transformers infers it: one label → regression, integer labels →
    single-label classification, float labels over K > 1 → multi-label."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int, torch.int16, torch.uint8):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    return config.problem_type


def chip_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """MSE (regression), cross-entropy (single label) or binary cross-entropy with logits (multi label)."""
    if problem_type == "regression":
        return nn.functional.mse_loss(logits.float().squeeze(-1), labels.float().view(logits.shape[0], -1).squeeze(-1))
    if problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.float(), labels.long().view(-1))
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    raise ValueError(
        f"unknown problem_type {problem_type!r}; use regression, single_label_classification or "
        "multi_label_classification."
    )


class ClayForImageClassification(ClayHeadsPreTrainedModel):
    """The v0 chip embedding (the mean of the patch tokens, `ClayModel.pooler_output`) → dropout → a linear layer
    to `num_labels` logits (B, K). `config.problem_type`: single-label, multi-label classification or regression (one
    label: a chip-level value such as biomass); `labels`: (B,) class ids, (B, K) multi-label targets in {0, 1}, or
    (B,) / (B, 1) regression values. Returns an `ImageClassifierOutput`."""

    output_class = ImageClassifierOutput

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^decoder\."]

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        self.clay = ClayModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _logits(self, encoded: ModelOutput, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(encoded.pooler_output))  # (B, K)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return chip_loss(logits, labels, resolve_problem_type(self.config, labels))


__all__ = [
    "ClayBackbone",
    "ClayFCNHead",
    "ClayFeaturePyramidNeck",
    "ClayForImageClassification",
    "ClayForSemanticSegmentation",
    "chip_loss",
    "pyramid_scales",
    "semantic_segmentation_loss",
    "soft_dice_loss",
    "tokens_to_feature_map",
]
