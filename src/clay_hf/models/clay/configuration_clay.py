"""Configuration of the Clay v0 masked autoencoder."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PretrainedConfig

from .configuration_clay_heads import ClayTaskConfigMixin

#: The 13 input bands of Clay v0, in the order the model reads them.
CLAY_V0_BAND_NAMES: list[str] = [
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir16",
    "swir22",
    "vv",
    "vh",
    "dem",
]

#: The six v0 band groups. Their ORDER fixes the token order and the band encoding.
CLAY_V0_BAND_GROUPS: list[list[Any]] = [
    ["rgb", [2, 1, 0]],
    ["rededge", [3, 4, 5, 7]],
    ["nir", [6]],
    ["swir", [8, 9]],
    ["sar", [10, 11]],
    ["dem", [12]],
]

#: Shapes of the original `clay_tiny` … `clay_large` factories (model_size in a v0 checkpoint).
CLAY_V0_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        head_dim=64,
        intermediate_size=512,
        decoder_hidden_size=128,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_head_dim=64,
        decoder_intermediate_size=256,
    ),
    "small": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        head_dim=64,
        intermediate_size=3072,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=8,
        decoder_head_dim=64,
        decoder_intermediate_size=2048,
    ),
    "medium": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        head_dim=64,
        intermediate_size=4096,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_head_dim=64,
        decoder_intermediate_size=2048,
    ),
    "large": dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        head_dim=64,
        intermediate_size=5120,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_head_dim=64,
        decoder_intermediate_size=2048,
    ),
}


def normalize_band_groups(band_groups: Mapping[str, Sequence[int]] | Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Return band groups as an ordered list of `[name, [band indices]]` pairs.

    Accepts that list itself (also with tuples) or a mapping `{name: indices}`, whose insertion order is kept.
    """
    if isinstance(band_groups, Mapping):
        pairs = list(band_groups.items())
    else:
        pairs = []
        for entry in band_groups:
            if not (isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2):
                raise ValueError(f"Each band group must be a `[name, [band indices]]` pair, got {entry!r}.")
            pairs.append((entry[0], entry[1]))
    groups = []
    for name, indices in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Band group names must be non-empty strings, got {name!r}.")
        if isinstance(indices, int):
            indices = [indices]
        groups.append([name, [int(index) for index in indices]])
    return groups


class ClayConfig(ClayTaskConfigMixin, PretrainedConfig):
    r"""Configuration of a Clay v0 model ([`ClayModel`], [`ClayForMaskedImageModeling`]).

    The defaults are the released `clay_small` v0.1 model: 13 bands in six groups, 512×512 chips, patches of 32,
    a 12-layer encoder of width 768 and an 8-layer decoder of width 512.

    Args:
        image_size: Side of the square input chip in pixels (a default; any multiple of `patch_size` runs).
        patch_size: Side of a square patch in pixels.
        mask_ratio: Share of the G·L group-patch tokens masked in pretraining.
        band_names: Names of the input bands, in channel order.
        band_groups: Ordered `[name, [band indices]]` pairs. Each group has its own patch embedding and decoder
            head; the order fixes the token order and the band encoding. A dict is accepted and converted.
        hidden_size, num_hidden_layers, num_attention_heads, head_dim, intermediate_size: Encoder shape.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_head_dim,
        decoder_intermediate_size: Decoder shape.
        hidden_dropout_prob: Dropout after the attention and MLP blocks.
        attention_probs_dropout_prob: Dropout on the attention probabilities.
        layer_norm_eps: Epsilon of every LayerNorm.
        initializer_range: Standard deviation of the normal initialisation of linear layers.
        num_channels: Accepted as in transformers' vision configs (and in a config.json), but it follows from
            `band_names`: it must equal their number.
        out_indices, out_features, feature_fusion, decode_head_type, neck_hidden_size, decode_hidden_size,
        pool_scales, ignore_index, dice_loss_weight, classifier_dropout_prob: Fine-tuning fields of the backbone and
            the heads (see `configuration_clay_heads.py`).
    """

    model_type = "clay"

    def __init__(
        self,
        image_size: int = 512,
        patch_size: int = 32,
        mask_ratio: float = 0.75,
        band_names: Sequence[str] | None = None,
        band_groups: Mapping[str, Sequence[int]] | Sequence[Sequence[Any]] | None = None,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        head_dim: int = 64,
        intermediate_size: int = 3072,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 8,
        decoder_head_dim: int = 64,
        decoder_intermediate_size: int = 2048,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        num_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.band_names = list(band_names) if band_names is not None else list(CLAY_V0_BAND_NAMES)
        self.band_groups = normalize_band_groups(band_groups if band_groups is not None else CLAY_V0_BAND_GROUPS)
        if num_channels is not None and num_channels != len(self.band_names):
            raise ValueError(
                f"num_channels={num_channels}, but this config has {len(self.band_names)} bands {self.band_names}: "
                "num_channels follows band_names (give band_names and band_groups for other bands)."
            )
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_head_dim = decoder_head_dim
        self.decoder_intermediate_size = decoder_intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self._init_task_fields(kwargs)
        super().__init__(**kwargs)
        self._validate()

    def __setattr__(self, key: str, value: Any) -> None:
        # However band_groups is set (here, by `from_dict`, by a user), it is stored as the ordered list of pairs.
        if key == "band_groups" and value is not None:
            value = normalize_band_groups(value)
        super().__setattr__(key, value)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> ClayConfig | tuple[ClayConfig, dict[str, Any]]:
        """As `PretrainedConfig.from_dict`, but Clay's own fields among `kwargs` go through `__init__` (so they are
        normalised and validated like constructor arguments), and `bands=[...]` selects band groups by name (see
        [`select_bands`]). This is the path of `ClayConfig.from_pretrained(path, **kwargs)` and of the models'
        `from_pretrained(path, **kwargs)`."""
        bands = kwargs.pop("bands", None)
        own_fields = {key: kwargs.pop(key) for key in list(kwargs) if key in _INIT_FIELDS}
        result = super().from_dict({**config_dict, **own_fields}, **kwargs)
        if bands is None:
            return result
        if isinstance(result, tuple):
            config, unused = result
            return config.select_bands(bands), unused
        return result.select_bands(bands)

    def select_bands(self, bands: Sequence[str]) -> ClayConfig:
        """The config of a model for inputs that hold `bands` (names, in the input's channel order).

        Keeps the band groups whose bands are all in `bands` (in this config's group order, so the kept groups load
        their weights by name from this config's checkpoint) and drops the others. The new `band_names` are the
        kept groups' bands in the order of `bands`. Sizes and every other field are unchanged.
        """
        bands = list(bands)
        unknown = [band for band in bands if band not in self.band_names]
        if unknown or len(set(bands)) != len(bands):
            problem = f"unknown bands {unknown}" if unknown else f"repeated bands in {bands}"
            raise ValueError(f"select_bands: {problem}; this model knows {self.band_names}.")
        kept, dropped = [], {}
        for name, indices in self.band_groups:
            group_bands = [self.band_names[index] for index in indices]
            if all(band in bands for band in group_bands):
                kept.append((name, group_bands))
            else:
                dropped[name] = [band for band in group_bands if band not in bands]
        if not kept:
            needs = "; ".join(f"{name}: {[self.band_names[i] for i in indices]}" for name, indices in self.band_groups)
            raise ValueError(f"bands {bands} complete no band group of this model (groups and their bands: {needs}).")
        used = {band for _, group_bands in kept for band in group_bands}
        band_names = [band for band in bands if band in used]
        config = copy.deepcopy(self)
        config.band_names = band_names
        config.band_groups = [[name, [band_names.index(band) for band in group_bands]] for name, group_bands in kept]
        config._validate()
        config._dropped_band_groups = {**getattr(self, "_dropped_band_groups", {}), **dropped}
        return config

    def band_selection_summary(self) -> str | None:
        """One line on the band groups [`select_bands`] dropped (None when it dropped none)."""
        dropped = getattr(self, "_dropped_band_groups", None)
        if not dropped:
            return None
        missing = "; ".join(f"{name} (lacks {', '.join(bands)})" for name, bands in dropped.items())
        return (
            f"reading bands {self.band_names} with band groups {self.group_names}; dropped the groups whose bands "
            f"are not all given (their weights are not loaded): {missing}."
        )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_dropped_band_groups", None)  # a note for loading, not part of the saved model
        return output

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> ClayConfig:
        """Build the config of a v0 model size: `tiny`, `small` (the released model), `medium` or `large`."""
        if name not in CLAY_V0_PRESETS:
            raise ValueError(f"Unknown Clay preset {name!r}; choose one of {sorted(CLAY_V0_PRESETS)}.")
        return cls(**{**CLAY_V0_PRESETS[name], **kwargs})

    @property
    def num_channels(self) -> int:
        """Number of input bands."""
        return len(self.band_names)

    @property
    def group_names(self) -> list[str]:
        """Band group names, in token order."""
        return [name for name, _ in self.band_groups]

    @property
    def num_groups(self) -> int:
        return len(self.band_groups)

    def _validate(self) -> None:
        if self.patch_size <= 0 or self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be a positive multiple of patch_size ({self.patch_size})."
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        if len(set(self.band_names)) != len(self.band_names):
            raise ValueError(f"band_names must be unique, got {self.band_names}.")
        self._validate_band_groups()
        for prefix, width in (("hidden_size", self.hidden_size), ("decoder_hidden_size", self.decoder_hidden_size)):
            # Half the width encodes position with four sin/cos parts of d/4 frequencies (d/4 > 1), the other half
            # encodes the band group with two parts of d/2 frequencies.
            if width % 8 != 0 or width < 16:
                raise ValueError(
                    f"{prefix} ({width}) must be a multiple of 8 and at least 16: the sin-cos position encoding "
                    "splits half of it into four parts of at least two frequencies."
                )

    def _validate_band_groups(self) -> None:
        if not self.band_groups:
            raise ValueError("band_groups must name at least one group.")
        names = self.group_names
        if len(set(names)) != len(names):
            raise ValueError(f"band group names must be unique, got {names}.")
        seen: dict[int, str] = {}
        for name, indices in self.band_groups:
            if not indices:
                raise ValueError(f"band group {name!r} has no bands.")
            for index in indices:
                if not 0 <= index < self.num_channels:
                    raise ValueError(
                        f"band group {name!r} uses band index {index}, out of range for {self.num_channels} "
                        f"bands {self.band_names}."
                    )
                if index in seen:
                    raise ValueError(f"band index {index} is in both group {seen[index]!r} and group {name!r}.")
                seen[index] = name


#: Clay's own constructor arguments (what `from_dict` routes through `__init__`).
_INIT_FIELDS = frozenset(inspect.signature(ClayConfig.__init__).parameters) - {"self", "kwargs"}


__all__ = ["CLAY_V0_BAND_GROUPS", "CLAY_V0_BAND_NAMES", "CLAY_V0_PRESETS", "ClayConfig", "normalize_band_groups"]
