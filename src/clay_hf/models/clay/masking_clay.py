"""Masking of Clay's group-patch tokens (the v0 convention: the smallest noise is MASKED), and picking the kept ones.

Notation as in `modeling_clay`: B batch, G band groups, L spatial patches, N tokens kept, D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClayMasking:
    """Which group-patch tokens a forward pass keeps, in the v0 convention (the smallest noise is MASKED)."""

    mask: torch.Tensor  # (B, G·L), 1 = masked
    kept_indices: torch.Tensor  # (B, N), in ascending-noise order
    masked_indices: torch.Tensor  # (B, G·L − N)


def random_masking(noise: torch.Tensor, mask_ratio: float) -> ClayMasking:
    """Sort `noise` (B, G·L) ascending; the first int(mask_ratio·G·L) tokens are masked, the rest kept."""
    batch_size, num_tokens = noise.shape
    num_masked = int(mask_ratio * num_tokens)
    shuffle = torch.argsort(noise, dim=-1)  # (B, G·L)
    masked_indices, kept_indices = shuffle[:, :num_masked], shuffle[:, num_masked:]
    mask = torch.zeros(batch_size, num_tokens, device=noise.device)
    mask.scatter_(1, masked_indices, 1.0)  # (B, G·L)
    return ClayMasking(mask=mask, kept_indices=kept_indices, masked_indices=masked_indices)


def masking_from_bool_masked_pos(bool_masked_pos: torch.Tensor, num_tokens: int) -> ClayMasking:
    """A given mask (B, G·L), True = masked, as a [`ClayMasking`]: masked and kept tokens in position order.

    The encoder drops masked tokens (MAE style), so every chip must mask the same number of tokens and keep one.
    """
    if bool_masked_pos.ndim != 2 or bool_masked_pos.shape[1] != num_tokens:
        raise ValueError(
            f"bool_masked_pos must be (B, G·L) = (B, {num_tokens}), True where a group-patch token is masked; got "
            f"shape {tuple(bool_masked_pos.shape)}."
        )
    bool_masked_pos = bool_masked_pos.bool()
    counts = bool_masked_pos.sum(dim=1)  # (B,)
    num_masked = int(counts[0])
    if (counts != num_masked).any():
        raise ValueError(
            f"bool_masked_pos must mask the same number of tokens in every chip (the kept tokens form one batch); "
            f"got {counts.tolist()}."
        )
    if num_masked == num_tokens:
        raise ValueError(f"bool_masked_pos masks all {num_tokens} tokens; the encoder needs at least one kept token.")
    order = torch.argsort((~bool_masked_pos).to(torch.uint8), dim=1, stable=True)  # (B, G·L): masked first
    return ClayMasking(
        mask=bool_masked_pos.float(), kept_indices=order[:, num_masked:], masked_indices=order[:, :num_masked]
    )


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Pick `indices` (B, N) along the token axis of `tokens` (B, T, D) → (B, N, D)."""
    return torch.gather(tokens, 1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


def check_masking_arguments(
    noise: torch.Tensor | None, mask_ratio: float | None, bool_masked_pos: torch.Tensor | None
) -> None:
    """One way of masking at a time, and a mask ratio that keeps tokens."""
    if bool_masked_pos is not None and (noise is not None or mask_ratio is not None):
        raise ValueError("pass bool_masked_pos or noise/mask_ratio, not both: bool_masked_pos fixes the masked tokens.")
    if mask_ratio is not None and not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (the encoder needs a kept token), got {mask_ratio}.")


__all__ = ["ClayMasking", "check_masking_arguments", "gather_tokens", "masking_from_bool_masked_pos", "random_masking"]
