"""A toy Clay configuration for tests, benchmarks and examples: seconds on a CPU, not a model to use.

The v0 sizes are presets (`ClayConfig.from_preset("tiny")` … `"large"`); this one is smaller than all of them, and
shared so that the test suite and the benchmarks measure the same model.
"""

from __future__ import annotations

from typing import Any

from .models.clay.configuration_clay import ClayConfig

#: 13 bands in the six v0 groups, 32×32 chips of 8-pixel patches, a 2-layer encoder of width 32, a 1-layer decoder.
TOY_CONFIG_FIELDS: dict[str, Any] = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    head_dim=16,
    intermediate_size=64,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_head_dim=8,
    decoder_intermediate_size=32,
)


def toy_config(**overrides: Any) -> ClayConfig:
    """The toy config, with any field of [`ClayConfig`] replaced by `overrides`."""
    return ClayConfig(**{**TOY_CONFIG_FIELDS, **overrides})


__all__ = ["TOY_CONFIG_FIELDS", "toy_config"]
