"""Batches copied to the device one step ahead: the same batches, and a resume point that skips nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from clay_hf.training.arguments import PretrainingArguments
from clay_hf.training.prefetch import DevicePrefetcher, batch_to_device
from clay_hf.training.pretrain import build_optimizer


def loader() -> StatefulDataLoader:
    data = [{"pixels": torch.full((2, 4, 4), float(i)), "timestep": torch.zeros(3), "latlon": torch.zeros(2)}
            for i in range(10)]  # fmt: skip
    return StatefulDataLoader(data, batch_size=2)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")  # torchdata 0.11 on torch >= 2.10
def test_prefetcher_gives_the_loader_batches_and_its_resume_point():
    plain, wrapped = loader(), DevicePrefetcher(loader(), torch.device("cpu"))
    assert [b["pixels"].tolist() for b in plain] == [b["pixels"].tolist() for b in wrapped]
    wrapped = DevicePrefetcher(loader(), torch.device("cpu"))
    iterator = iter(wrapped)
    first = [next(iterator)["pixels"][:, 0, 0, 0].tolist() for _ in range(2)]
    resumed = DevicePrefetcher(loader(), torch.device("cpu"))
    resumed.load_state_dict(wrapped.state_dict())
    rest = [batch["pixels"][:, 0, 0, 0].tolist() for batch in resumed]
    assert first + rest == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]


def test_batch_to_device_moves_only_model_inputs():
    batch = {"pixels": torch.zeros(1), "source_url": ["a"], "bbox": torch.zeros(4)}
    moved = batch_to_device(batch, torch.device("meta"))
    assert moved["pixels"].device.type == "meta" and moved["bbox"].device.type == "cpu"
    assert moved["source_url"] == ["a"]


def test_adamw_is_fused_on_cuda_and_cpu():
    args = PretrainingArguments(output_dir="unused", learning_rate=1e-4, weight_decay=0.05)
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(model, args, torch.device("cuda")).defaults["fused"] is True
    assert build_optimizer(model, args, torch.device("cpu")).defaults["fused"] is True
    assert build_optimizer(model, args).defaults["fused"] is True  # the parameters' device: the CPU
    assert not build_optimizer(model, args, torch.device("meta")).defaults["fused"]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, None), (torch.bfloat16, 2e-2)])
def test_fused_adamw_on_the_cpu_steps_as_the_plain_one(dtype, tolerance):
    """The fused kernel is the same update: after a few steps the parameters agree with the plain AdamW's in float32
    (to rounding, or to bf16's precision for bf16 parameters)."""
    args = PretrainingArguments(output_dir="unused", learning_rate=1e-2, weight_decay=0.05)
    torch.manual_seed(0)
    plain_model = torch.nn.Linear(8, 4)
    fused_model, initial = copy.deepcopy(plain_model).to(dtype), copy.deepcopy(plain_model)
    fused = build_optimizer(fused_model, args, torch.device("cpu"))
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.9, 0.95))
    inputs = torch.randn(16, 8)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            model(inputs.to(model.weight.dtype)).float().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for got, expected in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)
    assert not torch.equal(plain_model.weight, initial.weight)  # the steps moved the parameters
