"""The training path stores fewer activations: LayerNorm outputs and GELU outputs are recomputed in backward.

Each test compares against the plain modules (`linear(layernorm(x))`, `linear(gelu(h))`), which store them.
"""

import pytest
import torch
from conftest import random_inputs, small_config
from torch import nn

from clay_hf import ClayForMaskedImageModeling
from clay_hf.models.clay import modeling_clay
from clay_hf.models.clay.recompute import gelu_linear, layernorm_linear


def plain_layernorm_linear(x, layernorm, linear, recompute=False):
    return linear(layernorm(x))


def plain_gelu_linear(pre_activation, linear, recompute=False):
    return linear(nn.functional.gelu(pre_activation))


def layer_modules(dtype=torch.float32):
    torch.manual_seed(0)
    layernorm, first, second = nn.LayerNorm(16), nn.Linear(16, 24), nn.Linear(24, 8)
    with torch.no_grad():
        layernorm.weight.normal_(), layernorm.bias.normal_()  # not the identity initialisation
    return layernorm.to(dtype), first.to(dtype), second.to(dtype)


def gradients(function, inputs, params):
    return torch.autograd.grad(function(*inputs).float().square().sum(), [*inputs, *params])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm_linear_matches_the_plain_modules(dtype):
    layernorm, linear, _ = layer_modules(dtype)
    x = torch.randn(2, 5, 16, dtype=dtype, requires_grad=True)
    params = [layernorm.weight, layernorm.bias, linear.weight, linear.bias]
    torch.testing.assert_close(layernorm_linear(x, layernorm, linear), linear(layernorm(x)), atol=0, rtol=0)
    ours = gradients(lambda x: layernorm_linear(x, layernorm, linear), [x], params)
    plain = gradients(lambda x: linear(layernorm(x)), [x], params)
    for mine, reference in zip(ours, plain, strict=True):
        torch.testing.assert_close(mine, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_linear_matches_the_plain_modules(dtype):
    _, _, linear = layer_modules(dtype)
    h = torch.randn(2, 5, 24, dtype=dtype, requires_grad=True)
    torch.testing.assert_close(gelu_linear(h, linear), plain_gelu_linear(h, linear), atol=0, rtol=0)
    ours = gradients(lambda h: gelu_linear(h, linear), [h], [linear.weight, linear.bias])
    plain = gradients(lambda h: plain_gelu_linear(h, linear), [h], [linear.weight, linear.bias])
    for mine, reference in zip(ours, plain, strict=True):
        torch.testing.assert_close(mine, reference)


def test_gradients_pass_gradcheck():
    layernorm, first, second = layer_modules(torch.float64)
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    params = (layernorm.weight, layernorm.bias, first.weight, first.bias, second.weight, second.bias)

    def block(x, *params):
        return gelu_linear(layernorm_linear(x, layernorm, first), second)

    assert torch.autograd.gradcheck(block, (x, *params))


def test_bf16_autocast_gives_the_plain_dtypes_and_gradients():
    """Under autocast the backward re-enters the forward's autocast state: same bf16 outputs, same fp32 grads."""
    layernorm, first, second = layer_modules()
    x = torch.randn(2, 5, 16, requires_grad=True)
    params = [layernorm.weight, layernorm.bias, first.weight, first.bias, second.weight, second.bias]

    def run(norm_linear, act_linear):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = act_linear(norm_linear(x, layernorm, first), second)
        return output, torch.autograd.grad(output.float().square().sum(), [x, *params])

    output, ours = run(layernorm_linear, gelu_linear)
    plain_output, plain = run(plain_layernorm_linear, plain_gelu_linear)
    assert output.dtype == plain_output.dtype == torch.bfloat16
    torch.testing.assert_close(output, plain_output, atol=0, rtol=0)
    for mine, reference in zip(ours, plain, strict=True):
        assert mine.dtype == reference.dtype == torch.float32
        torch.testing.assert_close(mine, reference)


def test_frozen_parameters_get_no_gradient():
    layernorm, linear, _ = layer_modules()
    for param in (*layernorm.parameters(), *linear.parameters()):
        param.requires_grad_(False)
    x = torch.randn(2, 5, 16, requires_grad=True)
    layernorm_linear(x, layernorm, linear).sum().backward()
    assert x.grad is not None and all(param.grad is None for param in (*layernorm.parameters(), linear.weight))


def ours_and_plain(monkeypatch, measure):
    """`measure()` on the training path, then again with the plain modules (which store norms and GELUs)."""
    ours = measure()
    monkeypatch.setattr(modeling_clay, "layernorm_linear", plain_layernorm_linear)
    monkeypatch.setattr(modeling_clay, "gelu_linear", plain_gelu_linear)
    return ours, measure()


def model_gradients(model, inputs, noise):
    model.zero_grad()
    model(**inputs, noise=noise).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_model_gradients_equal_those_of_the_plain_modules(monkeypatch, attn_implementation):
    config = small_config()
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(config).train()
    inputs, noise = random_inputs(config), torch.rand(2, config.num_groups * 16)
    ours, plain = ours_and_plain(monkeypatch, lambda: model_gradients(model, inputs, noise))
    assert ours.keys() == plain.keys() and len(ours) == sum(1 for _ in model.parameters())
    for name in ours:
        torch.testing.assert_close(ours[name], plain[name], msg=name)


def saved_activation_bytes(model, inputs, noise) -> int:
    """Bytes of the distinct non-parameter tensors autograd stores for backward in one forward pass."""
    parameters = {param.untyped_storage().data_ptr() for param in model.parameters()}
    stored: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            stored[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs, noise=noise)
    return sum(stored.values())


def test_each_block_stores_neither_its_normalised_tokens_nor_its_gelu_output(monkeypatch):
    """Per block and token, fewer floats: two LayerNorm outputs (2·width), their mean and 1/std (4), one GELU
    output (intermediate)."""
    config = small_config()
    model = ClayForMaskedImageModeling(config).train()
    inputs, noise = random_inputs(config), torch.rand(2, config.num_groups * 16)
    ours, plain = ours_and_plain(monkeypatch, lambda: saved_activation_bytes(model, inputs, noise))

    batch, tokens = 2, config.num_groups * 16
    encoder_tokens = int(tokens * (1 - config.mask_ratio)) + 2  # kept tokens + the two metadata tokens
    decoder_tokens = tokens + 2
    per_encoder_block = encoder_tokens * (2 * config.hidden_size + 4 + config.intermediate_size)
    per_decoder_block = decoder_tokens * (2 * config.decoder_hidden_size + 4 + config.decoder_intermediate_size)
    saved_floats = batch * (
        config.num_hidden_layers * per_encoder_block + config.decoder_num_hidden_layers * per_decoder_block
    )
    assert plain - ours == 4 * saved_floats


def test_double_backward_raises_instead_of_returning_wrong_gradients():
    layernorm, linear, second = layer_modules()
    x = torch.randn(2, 5, 16, requires_grad=True)
    for output in (layernorm_linear(x, layernorm, linear), gelu_linear(layernorm_linear(x, layernorm, linear), second)):
        (grad_x,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):
            grad_x.sum().backward()


def eager_encoder():
    """Second-order gradients need eager attention: PyTorch's CPU sdpa kernels have no double backward."""
    config = small_config()
    config._attn_implementation = "eager"
    return ClayForMaskedImageModeling(config).clay, random_inputs(config)


def input_gradient_penalty(model, inputs):
    """A second-order quantity: the squared norm of d(embedding)/d(pixels), itself differentiated."""
    pixels = inputs["pixel_values"].clone().requires_grad_(True)
    loss = model(**{**inputs, "pixel_values": pixels}).pooler_output.square().sum()
    (saliency,) = torch.autograd.grad(loss, pixels, create_graph=True)
    return saliency.square().sum()


def test_eval_mode_supports_second_order_gradients():
    """Gradient saliency with create_graph=True, then a double backward to the weights: plain modules in eval."""
    model, inputs = eager_encoder()
    input_gradient_penalty(model.eval(), inputs).backward()
    assert model.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_torch_func_grad_works_in_eval_mode():
    config = small_config()
    model = ClayForMaskedImageModeling(config).clay.eval()
    inputs = random_inputs(config)
    params = dict(model.named_parameters())

    def embedding_norm(params, pixels):
        outputs = torch.func.functional_call(model, params, (pixels, inputs["timestep"], inputs["latlon"]))
        return outputs.pooler_output.square().sum()

    func_grads = torch.func.grad(embedding_norm)(params, inputs["pixel_values"])
    embedding_norm(params, inputs["pixel_values"]).backward()
    for name, param in params.items():
        torch.testing.assert_close(func_grads[name], param.grad, msg=name)


def test_torch_func_grad_takes_the_plain_path_even_in_training_mode():
    config = small_config()
    model = ClayForMaskedImageModeling(config).clay.train()
    inputs = random_inputs(config)

    def embedding_norm(pixels):
        return model(pixels, inputs["timestep"], inputs["latlon"]).pooler_output.square().sum()

    torch.testing.assert_close(torch.func.grad(embedding_norm)(inputs["pixel_values"]).shape, (2, 13, 32, 32))


def test_training_mode_second_order_gradients_after_turning_recompute_off():
    model, inputs = eager_encoder()
    model.train()
    with pytest.raises(RuntimeError, match="differentiate twice"):
        input_gradient_penalty(model, inputs).backward()
    model.zero_grad()
    model.set_activation_recompute(False)
    input_gradient_penalty(model, inputs).backward()
    assert model.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0
