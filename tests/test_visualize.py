"""Reconstruction figures: the input's stretch, visible patches pasted back, errors over masked patches only."""

from __future__ import annotations

import numpy as np
import torch
from conftest import small_config

from clay_hf import ClayForMaskedImageModeling
from clay_hf.evaluation.visualize import band_mask, reconstruction_panels
from clay_hf.models.clay.image_processing_clay import CLAY_V0_BAND_STATISTICS


def test_panels_paste_visible_patches_and_map_errors_over_masked_patches_only():
    torch.manual_seed(0)
    config = small_config()
    model = ClayForMaskedImageModeling(config).eval()
    side = config.image_size // config.patch_size
    pixels = torch.randn(config.num_channels, config.image_size, config.image_size)
    noise = torch.rand(config.num_groups * side * side)
    statistics = (
        [CLAY_V0_BAND_STATISTICS[b][0] for b in config.band_names],
        [CLAY_V0_BAND_STATISTICS[b][1] for b in config.band_names],
    )
    images, errors = reconstruction_panels(model, pixels, torch.zeros(3), torch.zeros(2), noise, statistics)

    outputs = model(pixels[None], torch.zeros(1, 3), torch.zeros(1, 2), noise=noise[None])
    group_mask = outputs.mask[0].view(config.num_groups, side, side).bool()  # (G, h, w)
    rgb = next(i for i, (name, _) in enumerate(config.band_groups) if name == "rgb")
    hidden = group_mask[rgb].repeat_interleave(config.patch_size, 0).repeat_interleave(config.patch_size, 1).numpy()
    assert 0 < hidden.mean() < 1
    pasted, original, reconstruction = images["reconstruction + visible"], images["input"], images["reconstruction"]
    np.testing.assert_array_equal(pasted[~hidden], original[~hidden])  # same pixels, same stretch
    np.testing.assert_array_equal(pasted[hidden], reconstruction[hidden])
    assert not np.array_equal(pasted, original)
    assert (images["masked input"][hidden] == 0.5).all()
    for index, (name, _) in enumerate(config.band_groups):
        np.testing.assert_array_equal(np.isnan(errors[name]), ~group_mask[index].numpy())


def test_band_mask_spreads_each_group_mask_over_its_bands():
    groups = [["a", [0, 2]], ["b", [1]]]
    mask = torch.tensor([1, 0, 0, 0, 0, 1, 1, 0])  # 2 groups × 2 × 2 patches
    pixels = band_mask(mask, groups, num_bands=3, side=2, patch=2)
    assert pixels.shape == (3, 4, 4)
    assert pixels[0, :2, :2].eq(1).all() and pixels[0].sum() == 4 and torch.equal(pixels[0], pixels[2])
    assert pixels[1, :2, 2:].eq(1).all() and pixels[1, 2:, :2].eq(1).all() and pixels[1].sum() == 8
