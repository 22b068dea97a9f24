"""Reconstruction figures: what the model sees and what it gives back, chip by chip."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import matplotlib
from transformers.utils.logging import get_logger

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data.chips import ChipLayout
from ..data.dataset import collate_chips
from ..data.sources import load_chip_dataset
from ..models.clay.image_processing_clay import ClayImageProcessor
from ..models.clay.modeling_clay import ClayForMaskedImageModeling, clay_per_patch_loss
from ..utils.outputs import atomic_file, make_folder

logger = get_logger(__name__)

RGB_BANDS = ("red", "green", "blue")


class NonFiniteReconstruction(ValueError):
    """A chip whose values overflow in the model: it is skipped, never drawn."""


def display_bands(band_names: Sequence[str]) -> list[int]:
    """Channels drawn as an image: red, green, blue when the model has them, else its first band as grey."""
    if all(band in band_names for band in RGB_BANDS):
        return [list(band_names).index(band) for band in RGB_BANDS]
    return [0, 0, 0]


def stretch_limits(pixels: torch.Tensor, band_names: Sequence[str]) -> tuple[float, float]:
    """The 2nd and 98th percentiles of the displayed channels of a (C, H, W) chip, taken together (one stretch
    for all three keeps the colours' balance)."""
    low, high = np.percentile(pixels[display_bands(band_names)].float().numpy(), [2, 98])
    return float(low), float(high)


def rgb_image(pixels: torch.Tensor, band_names: Sequence[str], limits: tuple[float, float] | None = None) -> np.ndarray:
    """(C, H, W) → an (H, W, 3) image in [0, 1], stretched over `limits` (default: this chip's own 2–98%)."""
    low, high = stretch_limits(pixels, band_names) if limits is None else limits
    channels = pixels[display_bands(band_names)].float().numpy()  # (3, H, W)
    return np.clip((channels - low) / max(high - low, 1e-6), 0, 1).transpose(1, 2, 0)


def band_mask(
    mask: torch.Tensor, band_groups: Sequence[Sequence], num_bands: int, side: int, patch: int
) -> torch.Tensor:
    """(G·L,) group-patch mask → (C, H, W) pixel mask, 1 where a band's patch was masked."""
    groups = mask.view(len(band_groups), side, side)  # (G, h, w)
    per_band = torch.zeros(num_bands, side, side)
    for group_index, (_, bands) in enumerate(band_groups):
        per_band[bands] = groups[group_index].float()
    return per_band.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)  # (C, H, W)


def reconstruction_panels(
    model: ClayForMaskedImageModeling,
    pixels: torch.Tensor,
    timestep: torch.Tensor,
    latlon: torch.Tensor,
    noise: torch.Tensor,
    band_statistics: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The images of one figure row, as ViTMAE's demo draws them, and the error maps.

    Images (H, W, 3), all with the input's stretch: `input`, `masked input`, `reconstruction` and
    `reconstruction + visible` (the visible patches pasted back). Error maps (h, w), one per band group: the
    per-patch squared error over the group's masked patches, NaN on its visible ones. `band_statistics` (the
    processor's per-band mean and std) turns normalised pixels back into raw values, so that one stretch over red,
    green and blue keeps their balance (true colour).
    """
    config = model.config
    with torch.no_grad():
        outputs = model(pixels[None], timestep[None], latlon[None], noise=noise[None])
    if not (torch.isfinite(pixels).all() and torch.isfinite(outputs.logits).all()):
        raise NonFiniteReconstruction("non-finite values in the input or its reconstruction")
    size = pixels.shape[-1]
    side = size // config.patch_size
    reconstruction = model.logits_to_image(outputs.logits, size, size)[0]  # (C, H, W)
    masked = band_mask(outputs.mask[0], config.band_groups, pixels.shape[0], side, config.patch_size)  # (C, H, W)
    pasted = torch.where(masked.bool(), reconstruction, pixels)

    mean, std = (torch.zeros(1), torch.ones(1)) if band_statistics is None else map(torch.tensor, band_statistics)
    raw = {  # (C, H, W) each, in raw units when the statistics are given
        "input": pixels * std[:, None, None] + mean[:, None, None],
        "reconstruction": reconstruction * std[:, None, None] + mean[:, None, None],
        "reconstruction + visible": pasted * std[:, None, None] + mean[:, None, None],
    }
    limits = stretch_limits(raw["input"], config.band_names)
    images = {name: rgb_image(image, config.band_names, limits) for name, image in raw.items()}
    masked_input = images["input"].copy()
    masked_input[masked[display_bands(config.band_names)[0]].numpy() == 1] = 0.5
    images = {"input": images["input"], "masked input": masked_input, **images}

    errors = clay_per_patch_loss(pixels[None], outputs.logits, config.patch_size)[0]  # (C, L)
    visible = ~outputs.mask[0].view(config.num_groups, side * side).bool()  # (G, L)
    error_maps = {
        name: errors[bands].mean(dim=0).masked_fill(visible[index], float("nan")).view(side, side).numpy()
        for index, (name, bands) in enumerate(config.band_groups)
    }
    return images, error_maps


def reconstruction_figure(
    model: ClayForMaskedImageModeling,
    pixels: torch.Tensor,
    timestep: torch.Tensor,
    latlon: torch.Tensor,
    noise: torch.Tensor,
    title: str,
    band_statistics: tuple[Sequence[float], Sequence[float]] | None = None,
) -> plt.Figure:
    """One row: the [`reconstruction_panels`] images, then each band group's error map (visible patches grey)."""
    images, error_maps = reconstruction_panels(model, pixels, timestep, latlon, noise, band_statistics)
    panels = len(images) + len(error_maps)
    figure, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.6))
    for axis, (name, image) in zip(axes, images.items(), strict=False):
        axis.imshow(image)
        axis.set_title(name, fontsize=8)
    colormap = matplotlib.colormaps["magma"].with_extremes(bad="lightgrey")
    for axis, (name, error) in zip(axes[len(images) :], error_maps.items(), strict=True):
        axis.imshow(error, cmap=colormap, vmin=0, interpolation="nearest")
        axis.set_title(f"error: {name} (masked)", fontsize=8)
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
    masking randomly with a fixed `seed`. Each PNG is written atomically ([`save_figure`])."""
    output = make_folder(output_dir)
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
        statistics = processor.band_statistics()
        try:
            figure = reconstruction_figure(
                model, pixels, batch["timestep"][0], batch["latlon"][0], noise, name, statistics
            )
        except NonFiniteReconstruction as error:
            logger.warning("skipped %s: %s", record["source_url"], error)
            continue
        written.append(save_figure(figure, output / f"{name}.png", dpi))
    return written


def save_figure(figure: plt.Figure, path: Path, dpi: int = 100) -> Path:
    """Save `figure` as the PNG `path`, atomically: it appears once it decodes whole; a full disk is an OutputError
    naming `path`. The figure is closed."""
    try:
        with atomic_file(path, verify=plt.imread) as temporary:
            figure.savefig(temporary, dpi=dpi, format="png")
    finally:
        plt.close(figure)
    return path


__all__ = [
    "band_mask",
    "display_bands",
    "reconstruction_figure",
    "reconstruction_panels",
    "rgb_image",
    "save_figure",
    "save_reconstructions",
    "stretch_limits",
]
