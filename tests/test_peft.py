"""Wrapped and hooked layers in training mode: PEFT LoRA adapters and forward hooks on the block's linear layers
run in training as in eval (the fused recompute path is taken only for plain `nn.Linear` layers)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_inputs, small_config
from peft import LoraConfig, get_peft_model
from torch import nn

from clay_hf import ClayForImageClassification
from clay_hf.models.clay.recompute import is_plain

TARGETS = ["qkv", "proj", "fc1", "fc2"]

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft's get_peft_model reads transformers' deprecated `is_gradient_checkpointing` (peft 0.21): library noise
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


def lora_model() -> nn.Module:
    """A classifier (dropout 0) with LoRA on the four linear layers of every block, adapters non-zero (as trained)."""
    torch.manual_seed(0)
    model = ClayForImageClassification(small_config(num_labels=3))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, config)


def test_lora_on_all_four_targets_gives_train_mode_the_eval_mode_logits_and_gradients_on_every_adapter():
    model = lora_model()
    inputs = random_inputs(model.config)
    with torch.no_grad():
        eval_logits = model.eval()(**inputs).logits  # (B, K)
    train_logits = model.train()(**inputs).logits
    torch.testing.assert_close(train_logits, eval_logits)
    train_logits.square().sum().backward()
    adapters = {name: param for name, param in model.named_parameters() if "lora_" in name}
    layers = model.config.num_hidden_layers
    assert len(adapters) == 2 * len(TARGETS) * layers  # lora_A and lora_B of each target in each block
    no_gradient = sorted(name for name, param in adapters.items() if param.grad is None or not param.grad.any())
    assert not no_gradient, no_gradient


def test_a_forward_hook_on_the_block_layers_fires_in_training_and_in_eval_mode():
    torch.manual_seed(0)
    model = ClayForImageClassification(small_config(num_labels=3))
    calls = {"train": 0, "eval": 0}
    mode = "train"

    def count(module, args, output):
        calls[mode] += 1

    layer = model.clay.encoder.layers[0]
    for linear in (layer.attention.qkv, layer.attention.proj, layer.mlp.fc1, layer.mlp.fc2):
        linear.register_forward_hook(count)
    inputs = random_inputs(model.config)
    model.train()(**inputs).logits.sum().backward()
    mode = "eval"
    with torch.no_grad():
        model.eval()(**inputs)
    assert calls == {"train": 4, "eval": 4}


def test_only_an_unhooked_plain_linear_is_fused():
    linear = nn.Linear(4, 4)
    assert is_plain(linear, nn.Linear)
    handle = linear.register_forward_pre_hook(lambda module, args: None)
    assert not is_plain(linear, nn.Linear)
    handle.remove()
    assert is_plain(linear, nn.Linear) and not is_plain(type("MyLinear", (nn.Linear,), {})(4, 4), nn.Linear)
    with nn.modules.module.register_module_forward_hook(lambda module, args, output: None):
        assert not is_plain(linear, nn.Linear)
