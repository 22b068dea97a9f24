"""The analytic FLOP count behind the MFU figures of benchmarks/ agrees with PyTorch's own FLOP counter."""

import pytest
import torch
from conftest import random_inputs, small_config
from torch.utils.flop_counter import FlopCounterMode

from clay_hf import ClayForMaskedImageModeling, ClayModel
from clay_hf.benchmarking import encoder_flops, pretraining_flops


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_encoder_flops_match_the_counter():
    """(On the CPU, PyTorch's counter does not see sdpa's fused kernel, so the eager path is counted.)"""
    config = small_config()
    config._attn_implementation = "eager"
    model = ClayModel(config).eval()
    inputs = random_inputs(config, batch_size=3)
    with torch.no_grad():
        counted = counted_flops(lambda: model(**inputs))
    assert counted == pytest.approx(3 * encoder_flops(config, config.image_size), rel=2e-3)


def test_pretraining_flops_match_the_counter_forward_and_backward():
    config = small_config()
    config._attn_implementation = "eager"
    model = ClayForMaskedImageModeling(config).train()
    inputs = random_inputs(config, batch_size=2)
    noise = torch.rand(2, config.num_groups * 16)
    forward = pretraining_flops(config, config.image_size, config.mask_ratio)
    with torch.no_grad():
        assert counted_flops(lambda: model(**inputs, noise=noise)) == pytest.approx(2 * forward, rel=2e-3)
    step = counted_flops(lambda: model(**inputs, noise=noise).loss.backward())
    # Backward is twice the forward, less the input gradient of the patch embedding (pixels need none).
    patch_embedding = 2 * 16 * config.num_channels * config.patch_size**2 * config.hidden_size
    assert step == pytest.approx(2 * (3 * forward - patch_embedding), rel=2e-3)
