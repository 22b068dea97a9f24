"""The analytic FLOP count behind the MFU figures of benchmarks/ agrees with PyTorch's own FLOP counter."""

import json
import time

import pytest
import torch
from conftest import random_inputs, small_config
from torch.utils.flop_counter import FlopCounterMode

from clay_hf import ClayForMaskedImageModeling, ClayModel
from clay_hf.models.benchmarking import encoder_flops, pretraining_flops
from clay_hf.utils.benchmarking import call_seconds, latency_ms, time_call, write_results


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


def test_call_seconds_times_each_call_after_the_warmup():
    calls = []
    seconds = call_seconds(lambda: calls.append(len(calls)), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and len(seconds) == 5 and all(s >= 0 for s in seconds)
    assert time_call(lambda: time.sleep(0.01), torch.device("cpu"), warmup=0, repeats=3) >= 0.01


def test_latency_ms_is_the_median_and_95th_percentile_in_milliseconds():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 … 100 ms
    assert latency_ms(seconds) == pytest.approx({"latency_ms_median": 50.5, "latency_ms_p95": 95.05})


def test_write_results_writes_the_json_it_prints(tmp_path, capsys):
    results = {"rows": [{"recall_at_k": 0.99}], "seconds": {"build": 1.5}}
    write_results(results, tmp_path / "new" / "results.json")
    assert json.loads((tmp_path / "new" / "results.json").read_text()) == results
    assert json.loads(capsys.readouterr().out) == results
