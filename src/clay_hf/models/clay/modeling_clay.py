"""PyTorch Clay v0: a masked autoencoder over band-group patches of Sentinel-2, Sentinel-1 and DEM chips.

Notation in shape comments: B batch, C bands, H=W image side, P patch side, h=w=H/P, L=h·w spatial patches,
G band groups, N tokens kept by the mask, D width of the encoder, E width of the decoder.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.logging import get_logger

from .configuration_clay import ClayConfig
from .loss_clay import (
    clay_group_error_sums,
    clay_masked_reconstruction_loss,
    clay_per_patch_loss,
    patch_grid_size,
    patchify,
    unpatchify,
)
from .masking_clay import (
    ClayMasking,
    check_masking_arguments,
    gather_tokens,
    masking_from_bool_masked_pos,
    random_masking,
)
from .recompute import gelu_linear, layernorm_linear

logger = get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Fixed sin-cos encodings
# ---------------------------------------------------------------------------------------------------------------------


def sincos_position_encoding(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """2-D sin-cos encoding of a `height × width` patch grid, row-major → (h·w, dim), float32.

    As in v0: ω = 1 / 10000^(k / (dim/4 − 1)) for k < dim/4, and [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)].
    """
    y, x = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )  # (h, w) each
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device) / (quarter - 1)))  # (dim/4,)
    y = y.flatten()[:, None] * omega[None, :]  # (L, dim/4)
    x = x.flatten()[:, None] * omega[None, :]  # (L, dim/4)
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()  # (L, dim)


def sincos_band_encoding(num_groups: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """1-D sin-cos encoding of the band-group index → (G, dim), float32. ω = 1 / 10000^(k / (dim/2 − 1))."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, device=device) / (half - 1)))  # (dim/2,)
    groups = torch.arange(num_groups, device=device)[:, None] * omega[None, :]  # (G, dim/2)
    return torch.cat((groups.sin(), groups.cos()), dim=1).float()  # (G, dim)


class ClayPositionBandEncoding(nn.Module):
    """The fixed [position, band] encoding of every group-patch token, group-major → (G·L, dim).

    Computed for the grid of the input (any image size), cached per grid, device and dtype; never a parameter
    or buffer, so loading a checkpoint cannot leave it uninitialised.
    """

    def __init__(self, dim: int, num_groups: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_groups = num_groups
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def forward(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (height, width, device, dtype)
        if key not in self._cache:
            self._cache[key] = self._build(height, width, device).to(dtype)
        return self._cache[key]

    def _build(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        num_patches = height * width
        position = sincos_position_encoding(height, width, self.dim // 2, device)  # (L, dim/2)
        band = sincos_band_encoding(self.num_groups, self.dim // 2, device)  # (G, dim/2)
        position = position[None].expand(self.num_groups, -1, -1)  # (G, L, dim/2)
        band = band[:, None].expand(-1, num_patches, -1)  # (G, L, dim/2)
        return torch.cat((position, band), dim=-1).reshape(self.num_groups * num_patches, self.dim)  # (G·L, dim)


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------


class ClayGroupPatchEmbedding(nn.Module):
    """One band group's patch stem: Conv2d(len(group) → D, kernel = stride = P), then LayerNorm(D)."""

    def __init__(self, config: ClayConfig, num_bands: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(num_bands, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.projection(pixel_values)  # (B, D, h, w)
        patches = patches.flatten(2).transpose(1, 2)  # (B, L, D)
        return self.layernorm(patches)


class ClayPatchEmbeddings(nn.Module):
    """Embeds each band group of the chip separately → (B, G, L, D)."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        self.groups = nn.ModuleDict(
            {name: ClayGroupPatchEmbedding(config, len(bands)) for name, bands in config.band_groups}
        )
        self.band_indices = {name: bands for name, bands in config.band_groups}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = [stem(pixel_values[:, self.band_indices[name]]) for name, stem in self.groups.items()]
        return torch.stack(patches, dim=1)  # (B, G, L, D)


class ClayEmbeddings(nn.Module):
    """Group-patch tokens with their [position, band] encoding, optional masking, then the metadata tokens."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embeddings = ClayPatchEmbeddings(config)
        self.position_band_encoding = ClayPositionBandEncoding(config.hidden_size, config.num_groups)
        self.latlon_embedding = nn.Linear(2, config.hidden_size)
        self.time_embedding = nn.Linear(3, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestep: torch.Tensor,
        latlon: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ClayMasking | None]:
        patches = self.patch_embeddings(pixel_values)  # (B, G, L, D)
        batch_size, num_groups, num_patches, dim = patches.shape
        height, width = (size // self.config.patch_size for size in pixel_values.shape[-2:])
        encoding = self.position_band_encoding(height, width, patches.device, patches.dtype)  # (G·L, D)
        tokens = patches.reshape(batch_size, num_groups * num_patches, dim) + encoding  # (B, G·L, D)
        tokens = self.dropout(tokens)

        masking = None
        if bool_masked_pos is not None:
            masking = masking_from_bool_masked_pos(bool_masked_pos.to(tokens.device), num_groups * num_patches)
        elif noise is not None or mask_ratio is not None:
            masking = self.mask(tokens, noise, self.config.mask_ratio if mask_ratio is None else mask_ratio)
        if masking is not None:
            tokens = gather_tokens(tokens, masking.kept_indices)  # (B, N, D)

        latlon_token = self.latlon_embedding(latlon.to(tokens.dtype))[:, None]  # (B, 1, D)
        time_token = self.time_embedding(timestep.to(tokens.dtype))[:, None]  # (B, 1, D)
        return torch.cat((tokens, latlon_token, time_token), dim=1), masking  # (B, N+2, D)

    def mask(self, tokens: torch.Tensor, noise: torch.Tensor | None, mask_ratio: float) -> ClayMasking:
        """v0 masking: noise is given, standard normal in training, or `arange` (no shuffle) in eval mode."""
        batch_size, num_tokens, _ = tokens.shape
        if noise is None:
            if self.training:
                noise = torch.randn(batch_size, num_tokens, device=tokens.device)
            else:
                noise = torch.arange(batch_size * num_tokens, device=tokens.device).view(batch_size, num_tokens)
        elif noise.shape != (batch_size, num_tokens):
            raise ValueError(f"noise must have shape (B, G·L) = {(batch_size, num_tokens)}, got {tuple(noise.shape)}.")
        return random_masking(noise.to(tokens.device), mask_ratio)


# ---------------------------------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------------------------------


# Adapted from transformers.models.vit.modeling_vit.eager_attention_forward (the same computation; `scaling` is
# required and the shapes are annotated). Kept in this file because it ships as remote code.
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ·scaling)·v over (B, heads, T, head_dim) → output (B, T, heads, head_dim) and weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, heads, T, T)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, heads, head_dim)
    return attn_output, attn_weights


class ClayAttention(nn.Module):
    """Multi-head self-attention: one bias-free qkv projection laid out `(3 heads head_dim)`, then an output
    projection with bias. Runs through transformers' attention interface (eager, sdpa, flash attention)."""

    def __init__(self, config: ClayConfig, hidden_size: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * num_heads * head_dim, bias=False)
        self.proj = nn.Linear(num_heads * head_dim, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        layernorm: nn.LayerNorm | None = None,
        recompute: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention over `hidden_states`, or over `layernorm(hidden_states)` when the block's pre-norm is
        passed (with `recompute`, the normalised tokens are recomputed in backward, not stored)."""
        batch_size, num_tokens, _ = hidden_states.shape
        if layernorm is None:
            qkv = self.qkv(hidden_states)  # (B, T, 3·heads·head_dim)
        else:
            qkv = layernorm_linear(hidden_states, layernorm, self.qkv, recompute)  # (B, T, 3·heads·head_dim)
        qkv = qkv.view(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        # Unbound along its own axis, the backward stacks the three gradients straight into qkv's layout (B, T, 3,
        # heads, head_dim), with no second copy to undo a permute.
        query, key, value = (part.transpose(1, 2) for part in qkv.unbind(2))  # 3 × (B, heads, T, head_dim)

        # Only the eager path returns attention probabilities.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        attn_output = attn_output.reshape(batch_size, num_tokens, self.num_heads * self.head_dim)  # (B, T, heads·hd)
        return self.proj(attn_output), attn_weights


class ClayMLP(nn.Module):
    """Linear(D → intermediate) → exact GELU → Linear(intermediate → D)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, layernorm: nn.LayerNorm | None = None, recompute: bool = False
    ) -> torch.Tensor:
        """The MLP of `hidden_states`, or of `layernorm(hidden_states)` when the block's pre-norm is passed. With
        `recompute` it stores fc1's input and output only: the norm and the GELU are recomputed in backward."""
        if layernorm is None:
            pre_activation = self.fc1(hidden_states)  # (B, T, intermediate)
        else:
            pre_activation = layernorm_linear(hidden_states, layernorm, self.fc1, recompute)  # (B, T, intermediate)
        return gelu_linear(pre_activation, self.fc2, recompute)  # (B, T, hidden)


class ClayLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    In training mode (and with `recompute_activations`, on by default) the LayerNorm and GELU outputs are recomputed
    in backward instead of stored (see [`clay_hf.models.clay.recompute`]); in eval mode the plain modules run, so second-order
    gradients and `torch.func` work.
    """

    recompute_activations: bool = True

    def __init__(
        self, config: ClayConfig, hidden_size: int, num_heads: int, head_dim: int, intermediate_size: int
    ) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = ClayAttention(config, hidden_size, num_heads, head_dim)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClayMLP(hidden_size, intermediate_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        recompute = self.training and self.recompute_activations
        attn_output, attn_weights = self.attention(
            hidden_states, output_attentions, layernorm=self.layernorm_before, recompute=recompute
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        mlp_output = self.mlp(hidden_states, layernorm=self.layernorm_after, recompute=recompute)
        hidden_states = hidden_states + self.dropout(mlp_output)
        return hidden_states, attn_weights


@dataclass
class ClayTransformerOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


class ClayTransformer(nn.Module):
    """A stack of [`ClayLayer`] with a final LayerNorm (used by the encoder and the decoder)."""

    def __init__(
        self,
        config: ClayConfig,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        intermediate_size: int,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ClayLayer(config, hidden_size, num_heads, head_dim, intermediate_size) for _ in range(num_layers)
        )
        self.layernorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> ClayTransformerOutput:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return ClayTransformerOutput(self.layernorm(hidden_states), all_hidden_states, all_attentions)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ClayModelOutput(ModelOutput):
    """Output of [`ClayModel`].

    Args:
        last_hidden_state: (B, T+2, D): the patch tokens (all G·L in original group-major order without masking,
            else the N kept ones), then the latlon token and the time token.
        pooler_output: (B, D): the mean over the patch tokens, the v0 embedding of a chip.
        mask: (B, G·L), 1 = masked; only when masking.
        kept_indices: (B, N), positions (in G·L) of the kept tokens, in the order of `last_hidden_state`.
        masked_indices: (B, G·L − N), positions of the masked tokens.
        hidden_states: the input of every layer and the output of the last (before the final LayerNorm).
        attentions: the attention probabilities of every layer, (B, heads, T+2, T+2) each.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    kept_indices: torch.Tensor | None = None
    masked_indices: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ClayForMaskedImageModelingOutput(ModelOutput):
    """Output of [`ClayForMaskedImageModeling`].

    Args:
        loss: the v0 masked reconstruction loss (see [`clay_masked_reconstruction_loss`]).
        logits: (B, C, L, P·P), the reconstruction of every patch (channel c is band c, see the loss).
        mask: (B, G·L), 1 = masked.
        kept_indices, masked_indices: as in [`ClayModelOutput`].
        encoder_last_hidden_state: (B, N+2, D), the encoder output.
        hidden_states, attentions: those of the encoder.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    kept_indices: torch.Tensor | None = None
    masked_indices: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class ClayPreTrainedModel(PreTrainedModel):
    config_class = ClayConfig
    config: ClayConfig
    base_model_prefix = "clay"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["ClayEmbeddings", "ClayLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # tested: torch.compile(model, fullgraph=True) traces the forward

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args,
        bands: Sequence[str] | None = None,
        **kwargs,
    ):
        """`PreTrainedModel.from_pretrained`, plus `bands=[...]`: the names of the input's bands, in its channel
        order. The model keeps the band groups whose bands are all given (its config is the saved one with
        [`ClayConfig.select_bands`], so every size works), loads their weights, and says in one log line which
        groups it dropped."""
        if bands is not None:
            config = kwargs.get("config")
            if isinstance(config, ClayConfig):
                kwargs["config"] = config.select_bands(bands)
            else:
                kwargs["bands"] = bands  # ClayConfig.from_dict selects the groups of the saved config
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if summary := model.config.band_selection_summary():
            logger.warning("%s: %s", cls.__name__, summary)
        return loaded

    def post_init(self) -> None:
        super().post_init()
        # Weights of the band groups that `select_bands` dropped are expected to be left out: not reported one by one.
        dropped = getattr(self.config, "_dropped_band_groups", None)
        if dropped:
            names = "|".join(re.escape(name) for name in dropped)
            self._keys_to_ignore_on_load_unexpected.add(rf"(^|\.)(patch_embeddings\.groups|to_pixels)\.({names})\.")

    def _encode(
        self, pixel_values: torch.Tensor, timestep: torch.Tensor, latlon: torch.Tensor, **options: bool | float | None
    ) -> ModelOutput:
        """The first step of every task model: its encoder `self.clay` (a [`ClayModel`], or a backbone built on it)
        on the three inputs, as an output object whatever `return_dict` the caller asked for. `options`:
        `output_hidden_states`, `output_attentions`, and `noise`, `mask_ratio` or `bool_masked_pos` (masking), as in
        [`ClayModel`]."""
        return self.clay(pixel_values, timestep, latlon, return_dict=True, **options)

    def _as_return_type(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        """`output`, or its tuple form when `return_dict` (default: `config.return_dict`) is False."""
        return output if _default(return_dict, self.config.return_dict) else output.to_tuple()

    def set_activation_recompute(self, enabled: bool) -> None:
        """Recompute LayerNorm and GELU outputs in backward in training mode (the default) or store them.

        The recomputing functions are first-order only: turn this off to take second-order gradients (e.g.
        `create_graph=True`) in training mode. Eval mode and `torch.func` always use the plain modules.
        """
        for module in self.modules():
            if isinstance(module, ClayLayer):
                module.recompute_activations = enabled

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ClayDecoder):
            init.normal_(module.mask_token, mean=0.0, std=std)


class ClayModel(ClayPreTrainedModel):
    """The Clay encoder: a chip, its place and its date → one token per group-patch, plus two metadata tokens.

    By default nothing is masked (the embedding of the whole chip); pass `mask_ratio` and/or `noise` to mask.
    """

    # A saved ClayForMaskedImageModeling also holds the decoder, which the encoder does not need.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^decoder\."]

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        self.embeddings = ClayEmbeddings(config)
        self.encoder = ClayTransformer(
            config,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.head_dim,
            config.intermediate_size,
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestep: torch.Tensor,
        latlon: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ClayModelOutput | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) normalised bands, H and W multiples of the patch size.
            timestep: (B, 3) encoded acquisition date (year, month, day), see [`encode_dates`].
            latlon: (B, 2) encoded chip centre (sin(lat), lon angle), see [`encode_lonlat`]; not degrees.
            noise: (B, G·L) masking noise; the smallest `mask_ratio` share is masked (v0 convention).
            mask_ratio: mask this share of tokens, in [0, 1); with only `noise` given, `config.mask_ratio` is used.
            bool_masked_pos: (B, G·L) bool, True = masked: the tokens to mask, instead of `noise`/`mask_ratio`. The
                encoder drops masked tokens (MAE style), so each chip must mask as many tokens as the others.
        """
        output_hidden_states = _default(output_hidden_states, self.config.output_hidden_states)
        output_attentions = _default(output_attentions, self.config.output_attentions)
        check_inputs(self.config, pixel_values, timestep, latlon)
        check_masking_arguments(noise, mask_ratio, bool_masked_pos)

        tokens, masking = self.embeddings(
            pixel_values.to(self.dtype),
            timestep,
            latlon,
            noise=noise,
            mask_ratio=mask_ratio,
            bool_masked_pos=bool_masked_pos,
        )  # (B, N+2, D)
        encoded = self.encoder(tokens, output_hidden_states, output_attentions)
        pooled = encoded.last_hidden_state[:, :-2].mean(dim=1)  # (B, D)

        output = ClayModelOutput(
            last_hidden_state=encoded.last_hidden_state,
            pooler_output=pooled,
            mask=masking.mask if masking else None,
            kept_indices=masking.kept_indices if masking else None,
            masked_indices=masking.masked_indices if masking else None,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return self._as_return_type(output, return_dict)

    def get_input_embeddings(self) -> nn.Module:
        """The patch embeddings (one Conv2d + LayerNorm stem per band group)."""
        return self.embeddings.patch_embeddings


def check_inputs(config: ClayConfig, pixel_values: torch.Tensor, timestep: torch.Tensor, latlon: torch.Tensor) -> None:
    """Shapes of the three inputs, and `timestep`/`latlon` in the range of the v0 encodings (not dates, degrees)."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}.")
    batch_size, channels, height, width = pixel_values.shape
    if channels != config.num_channels:
        raise ValueError(
            f"pixel_values has {channels} bands; this model reads {config.num_channels}: {config.band_names}."
        )
    patch = config.patch_size
    if height % patch or width % patch:
        raise ValueError(f"Image size {height}×{width} is not a multiple of the patch size {patch}.")
    for name, value, size, encoder in (
        ("timestep", timestep, 3, "encode_dates"),
        ("latlon", latlon, 2, "encode_lonlat"),
    ):
        if tuple(value.shape) != (batch_size, size):
            raise ValueError(
                f"{name} must be (B, {size}) = ({batch_size}, {size}) for {batch_size} chips in pixel_values, got "
                f"shape {tuple(value.shape)}; make it with clay_hf.{encoder} or ClayImageProcessor."
            )
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return  # the range check reads values: not traceable, and checked in eager runs
    _check_encoded_range(timestep, (math.pi,) * 3, "timestep", "dates (year, month, day)", "encode_dates")
    _check_encoded_range(latlon, (1.0, math.pi), "latlon", "degrees", "encode_lonlat")


def _check_encoded_range(
    values: torch.Tensor, bounds: tuple[float, ...], name: str, raw: str, encoder: str, tolerance: float = 1e-3
) -> None:
    """The v0 encodings are sines (in [-1, 1]) and atan2 angles (in [-π, π]); larger values are raw inputs."""
    limit = torch.tensor(bounds, dtype=torch.float32, device=values.device) + tolerance
    outside = values.detach().float().abs() > limit  # (B, k)
    if outside.any():
        example = values[outside.nonzero()[0].unbind()].item()
        raise ValueError(
            f"{name} holds {example:g}, outside the range of the v0 encoding (|value| ≤ {list(bounds)}): it looks "
            f"like raw {raw}. Encode them with clay_hf.{encoder} or ClayImageProcessor."
        )


class ClayDecoder(nn.Module):
    """The v0 decoder: encoder tokens → mask tokens filled in → transformer → per-group pixel heads."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder_to_decoder = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(config.decoder_hidden_size))
        self.position_band_encoding = ClayPositionBandEncoding(config.decoder_hidden_size, config.num_groups)
        self.transformer = ClayTransformer(
            config,
            config.decoder_hidden_size,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_head_dim,
            config.decoder_intermediate_size,
        )
        pixels_per_patch = config.patch_size**2
        self.to_pixels = nn.ModuleDict(
            {
                name: nn.Linear(config.decoder_hidden_size, pixels_per_patch * len(bands))
                for name, bands in config.band_groups
            }
        )

    def forward(
        self, encoder_tokens: torch.Tensor, kept_indices: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """(B, N+2, D) encoder output and the kept positions → (B, C, L, P·P) reconstruction, groups in order."""
        tokens = self.encoder_to_decoder(encoder_tokens)  # (B, N+2, E)
        tokens, metadata = tokens[:, :-2], tokens[:, -2:]  # (B, N, E), (B, 2, E)
        batch_size, _, dim = tokens.shape
        num_tokens = self.config.num_groups * height * width

        full = self.mask_token.to(tokens.dtype).expand(batch_size, num_tokens, dim)  # (B, G·L, E)
        full = full.scatter(1, kept_indices[..., None].expand(-1, -1, dim), tokens)  # (B, G·L, E)
        full = full + self.position_band_encoding(height, width, tokens.device, tokens.dtype)
        decoded = self.transformer(torch.cat((full, metadata), dim=1)).last_hidden_state[:, :-2]  # (B, G·L, E)
        return self.pixelify(decoded.view(batch_size, self.config.num_groups, height * width, dim))

    def pixelify(self, decoded: torch.Tensor) -> torch.Tensor:
        """(B, G, L, E) → (B, C, L, P·P): each group's head emits (P·P, bands) with the band innermost."""
        pixels_per_patch = self.config.patch_size**2
        pixels = []
        for index, head in enumerate(self.to_pixels.values()):
            group_pixels = head(decoded[:, index])  # (B, L, P·P·c)
            batch_size, num_patches, _ = group_pixels.shape
            group_pixels = group_pixels.view(batch_size, num_patches, pixels_per_patch, -1)  # (B, L, P·P, c)
            pixels.append(group_pixels.permute(0, 3, 1, 2))  # (B, c, L, P·P)
        return torch.cat(pixels, dim=1)  # (B, C, L, P·P)


class ClayForMaskedImageModeling(ClayPreTrainedModel):
    """Clay v0 pretraining model: the encoder ([`ClayModel`]), the decoder and the v0 loss."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        covered = sorted(index for _, bands in config.band_groups for index in bands)
        if covered != list(range(config.num_channels)):
            raise ValueError(
                "ClayForMaskedImageModeling reconstructs every band, so band_groups must cover each of the "
                f"{config.num_channels} bands exactly once; they cover {covered}."
            )
        self.clay = ClayModel(config)
        self.decoder = ClayDecoder(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        timestep: torch.Tensor,
        latlon: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ClayForMaskedImageModelingOutput | tuple:
        r"""
        Args:
            pixel_values, timestep, latlon: as in [`ClayModel`].
            noise: (B, G·L) masking noise (the smallest share is masked); without it the noise is random in
                training mode and `arange` (no shuffle, as v0 validation) in eval mode.
            mask_ratio: defaults to `config.mask_ratio`; it must mask at least one token (the loss is over them).
            bool_masked_pos: (B, G·L) bool, True = masked, instead of `noise`/`mask_ratio` (see [`ClayModel`]).
        """
        if bool_masked_pos is None and mask_ratio is None:
            mask_ratio = self.config.mask_ratio
        encoded = self._encode(
            pixel_values,
            timestep,
            latlon,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            noise=noise,
            mask_ratio=mask_ratio,
            bool_masked_pos=bool_masked_pos,
        )
        if encoded.masked_indices.shape[1] == 0:
            raise ValueError(
                f"no token is masked (mask_ratio={mask_ratio} of {encoded.mask.shape[1]} tokens, or an empty "
                "bool_masked_pos): the reconstruction loss is the error over masked tokens. Mask at least one, or "
                "use ClayModel for unmasked embeddings."
            )
        height, width = (size // self.config.patch_size for size in pixel_values.shape[-2:])
        logits = self.decoder(encoded.last_hidden_state, encoded.kept_indices, height, width)  # (B, C, L, P·P)
        loss = clay_masked_reconstruction_loss(
            pixel_values, logits, encoded.mask, self.config.band_groups, self.config.patch_size
        )
        output = ClayForMaskedImageModelingOutput(
            loss=loss,
            logits=logits,
            mask=encoded.mask,
            kept_indices=encoded.kept_indices,
            masked_indices=encoded.masked_indices,
            encoder_last_hidden_state=encoded.last_hidden_state,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return self._as_return_type(output, return_dict)

    def logits_to_image(
        self, logits: torch.Tensor, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """Turn `logits` (B, C, L, P·P) into an image (B, C, H, W) in band order (channel c is band c).

        Give the chip's `height` and/or `width` (one is enough: the other follows from L). With neither, the chip
        is taken to be the config's square `image_size`, which must have L patches; otherwise it is an error.
        """
        if logits.ndim != 4 or logits.shape[-1] != self.config.patch_size**2:
            raise ValueError(
                f"logits must be (B, C, L, P·P) with P·P = {self.config.patch_size**2}, got {tuple(logits.shape)}."
            )
        height, width = patch_grid_size(logits.shape[2], self.config.patch_size, height, width, self.config.image_size)
        return unpatchify(logits, height, width)


def _default(value: bool | None, fallback: bool) -> bool:
    return fallback if value is None else value


__all__ = [
    "ClayForMaskedImageModeling",
    "ClayForMaskedImageModelingOutput",
    "ClayModel",
    "ClayModelOutput",
    "ClayPreTrainedModel",
    "clay_group_error_sums",
    "clay_masked_reconstruction_loss",
    "clay_per_patch_loss",
    "patchify",
    "unpatchify",
]
