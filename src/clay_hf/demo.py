"""The end-to-end demo behind `make demo`, on built-in synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModel

from .configuration_clay import ClayConfig
from .modeling_clay import ClayForMaskedImageModeling


def demo_config() -> ClayConfig:
    """A tiny 13-band Clay that runs in seconds on a laptop core."""
    return ClayConfig.from_preset("tiny", image_size=64, patch_size=16, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, decoder_hidden_size=32, decoder_intermediate_size=64,
                                  decoder_num_hidden_layers=1)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="demo_output")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)

    torch.manual_seed(0)
    config = demo_config()
    model_dir = output_dir / "model"
    ClayForMaskedImageModeling(config).save_pretrained(model_dir)
    print(f"model: a {config.num_hidden_layers}-layer Clay saved to {model_dir}")

    encoder = AutoModel.from_pretrained(model_dir).eval()
    chip = torch.randn(1, config.num_channels, config.image_size, config.image_size)
    timestep, latlon = torch.zeros(1, 3), torch.zeros(1, 2)
    with torch.no_grad():
        embedding = encoder(chip, timestep, latlon).pooler_output[0]
    print(f"loaded back as {type(encoder).__name__}; embedding of a generated chip ({embedding.numel()} values):")
    print("  " + " ".join(f"{value:+.3f}" for value in embedding[:8].tolist()) + " …")


if __name__ == "__main__":
    main()
