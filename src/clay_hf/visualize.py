"""Reconstruction figures: what the model sees and what it gives back, chip by chip."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from .data.chips import ChipLayout
from .data.dataset import collate_chips
from .data.sources import load_chip_dataset
from .image_processing_clay import ClayImageProcessor
from .modeling_clay import ClayForMaskedImageModeling, clay_per_patch_loss

logger = logging.getLogger(__name__)

RGB_BANDS = ("red", "green", "blue")


class NonFiniteReconstruction(ValueError):
    """A chip whose values overflow in the model: it is skipped, never drawn."""


def rgb_image(pixels: torch.Tensor, band_names: Sequence[str]) -> np.ndarray:
    """Normalised (C, H, W) → an (H, W, 3) image in [0, 1], each band stretched over its 2nd–98th percentile."""
    channels = [pixels[band_names.index(band)].float().numpy() for band in RGB_BANDS]
    stretched = []
    for channel in channels:
        low, high = np.percentile(channel, [2, 98])
        stretched.append(np.clip((channel - low) / max(high - low, 1e-6), 0, 1))
    return np.stack(stretched, axis=-1)


def mask_image(mask: torch.Tensor, group_index: int, num_groups: int, side: int, patch_size: int) -> np.ndarray:
    """(G·L,) mask → the (H, W) mask of one group, 1 where masked."""
    grid = mask.view(num_groups, side, side)[group_index].numpy()
    return np.kron(grid, np.ones((patch_size, patch_size)))


def reconstruction_figure(
    model: ClayForMaskedImageModeling,
    pixels: torch.Tensor,
    timestep: torch.Tensor,
    latlon: torch.Tensor,
    noise: torch.Tensor,
    title: str,
) -> plt.Figure:
    """One row: input RGB, masked input, reconstruction, then the per-patch error of each band group."""
    config = model.config
    with torch.no_grad():
        outputs = model(pixels[None], timestep[None], latlon[None], noise=noise[None])
    if not (torch.isfinite(pixels).all() and torch.isfinite(outputs.logits).all()):
        raise NonFiniteReconstruction("non-finite values in the input or its reconstruction")
    size = pixels.shape[-1]
    side = size // config.patch_size
    reconstruction = model.logits_to_image(outputs.logits, size, size)[0]
    errors = clay_per_patch_loss(pixels[None], outputs.logits, config.patch_size)[0]  # (C, L)
    rgb_group = next(i for i, (_, bands) in enumerate(config.band_groups) if config.band_names.index("red") in bands)

    panels = 3 + config.num_groups
    figure, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.6))
    original = rgb_image(pixels, config.band_names)
    masked = original.copy()
    masked[mask_image(outputs.mask[0], rgb_group, config.num_groups, side, config.patch_size) == 1] = 0.5
    top_row = (original, masked, rgb_image(reconstruction, config.band_names))
    for axis, image, name in zip(axes, top_row, ("input", "masked (rgb)", "reconstruction"), strict=False):
        axis.imshow(image)
        axis.set_title(name, fontsize=8)
    for index, (name, bands) in enumerate(config.band_groups):
        error = errors[bands].mean(dim=0).view(side, side).numpy()
        axes[3 + index].imshow(error, cmap="magma", vmin=0)
        axes[3 + index].set_title(f"error: {name}", fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return figure


def save_reconstructions(
    model: ClayForMaskedImageModeling,
    processor: ClayImageProcessor,
    source: str | PathLike | Sequence[str],
    output_dir: str | PathLike,
    num_chips: int = 4,
    seed: int = 0,
    dpi: int = 100,
) -> list[Path]:
    """Save one PNG per chip for the first `num_chips` good chips (bad ones are skipped and named in a warning),
    masking randomly with a fixed `seed`."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    written = []
    dataset = load_chip_dataset(source, layout=ChipLayout.for_model(config))
    for record in dataset.filter(lambda record: not record["bad_chip"]):
        if len(written) == num_chips:
            break
        batch = collate_chips([record])
        pixels = processor.normalize_tensor(batch["pixels"], config.band_names)[0]
        side = pixels.shape[-1] // config.patch_size
        noise = torch.rand(config.num_groups * side * side, generator=generator)
        name = Path(record["source_url"]).stem
        try:
            figure = reconstruction_figure(model, pixels, batch["timestep"][0], batch["latlon"][0], noise, name)
        except NonFiniteReconstruction as error:
            logger.warning("skipped %s: %s", record["source_url"], error)
            continue
        path = output / f"{name}.png"
        figure.savefig(path, dpi=dpi)
        plt.close(figure)
        written.append(path)
    return written


__all__ = ["reconstruction_figure", "rgb_image", "save_reconstructions"]
