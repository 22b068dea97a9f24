"""The v0 patch layout of Clay's reconstructions and its masked reconstruction loss.

Notation: B batch, C bands, H, W image sides, P patch side, L = (H/P)·(W/P) patches, G band groups.
"""

from __future__ import annotations

import torch


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, L, P·P): row-major patches, row-major pixels inside a patch."""
    batch_size, channels, height, width = pixel_values.shape
    h, w = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch_size, channels, h, patch_size, w, patch_size)
    return patches.permute(0, 1, 2, 4, 3, 5).reshape(batch_size, channels, h * w, patch_size**2)


def unpatchify(patches: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, L, P·P) → (B, C, H, W), the inverse of [`patchify`]."""
    batch_size, channels, _, pixels_per_patch = patches.shape
    patch_size = round(pixels_per_patch**0.5)
    h, w = height // patch_size, width // patch_size
    image = patches.reshape(batch_size, channels, h, w, patch_size, patch_size)
    return image.permute(0, 1, 2, 4, 3, 5).reshape(batch_size, channels, height, width)


def clay_per_patch_loss(pixel_values: torch.Tensor, logits: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Squared error averaged over the P·P pixels of each patch → (B, C, L). Channels paired by position."""
    target = patchify(pixel_values, patch_size)  # (B, C, L, P·P)
    return ((logits.float() - target.float()) ** 2).mean(dim=-1)  # (B, C, L)


def clay_group_error_sums(
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    band_groups: list[list],
    patch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per band group: the sum over masked tokens of the group's per-patch error, and the masked-token count.

    Both are (G,). Sums and counts add up exactly across batches and ranks; sum / count is the masked MSE of a
    group, and their totals give the v0 loss (see [`clay_masked_reconstruction_loss`]).
    """
    per_patch = clay_per_patch_loss(pixel_values, logits, patch_size)  # (B, C, L)
    mask = mask.view(mask.shape[0], len(band_groups), -1).float()  # (B, G, L)
    group_errors = torch.stack([per_patch[:, bands].mean(dim=1) for _, bands in band_groups], dim=1)  # (B, G, L)
    return (group_errors * mask).sum(dim=(0, 2)), mask.sum(dim=(0, 2))


def clay_masked_reconstruction_loss(
    pixel_values: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    band_groups: list[list],
    patch_size: int,
) -> torch.Tensor:
    """The v0 loss, quirks included.

    The target is the normalised pixels in BAND order (B, C, L, P·P), the reconstruction is in GROUP order, and
    the squared error pairs them by channel position, so a trained decoder emits band c in channel c. For each
    group g, the per-patch error is averaged over the channels listed in g and weighted by g's mask; the sum over
    groups is divided by the number of masked tokens.
    """
    sums, counts = clay_group_error_sums(pixel_values, logits, mask, band_groups, patch_size)
    return sums.sum() / counts.sum()


def patch_grid_size(
    num_patches: int, patch_size: int, height: int | None, width: int | None, default_size: int
) -> tuple[int, int]:
    """The (H, W) of a chip with `num_patches` patches of `patch_size`, from the sides given (or `default_size`
    square when none is); an error where they do not fit or cannot be told."""
    for name, side in (("height", height), ("width", width)):
        if side is not None and (side <= 0 or side % patch_size):
            raise ValueError(f"{name} {side} is not a positive multiple of the patch size {patch_size}.")
    if height is None and width is None:
        if (default_size // patch_size) ** 2 != num_patches:
            raise ValueError(
                f"cannot tell the image size of {num_patches} patches: the config's {default_size}×{default_size} "
                "chip has a different count. Pass height and/or width."
            )
        return default_size, default_size
    if height is None or width is None:
        known = height if height is not None else width
        if num_patches % (known // patch_size):
            given = "height" if height is not None else "width"
            raise ValueError(
                f"{num_patches} patches cannot make an image of {given} {known} ({known // patch_size} patches of "
                f"{patch_size}); check height/width."
            )
        other = num_patches // (known // patch_size) * patch_size
        return (known, other) if height is not None else (other, known)
    if (height // patch_size) * (width // patch_size) != num_patches:
        raise ValueError(
            f"a {height}×{width} image has {(height // patch_size) * (width // patch_size)} patches of "
            f"{patch_size}, the logits {num_patches}."
        )
    return height, width


__all__ = [
    "clay_group_error_sums",
    "clay_masked_reconstruction_loss",
    "clay_per_patch_loss",
    "patch_grid_size",
    "patchify",
    "unpatchify",
]
