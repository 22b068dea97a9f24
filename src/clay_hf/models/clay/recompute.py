"""Linear layers that recompute their cheap input in backward, to store fewer activations in training.

A pre-norm transformer block would store LayerNorm(x) for the linear that reads it (besides x, which the LayerNorm
stores) and GELU(h) for fc2 (besides h, which the GELU stores): 6 of the 16 token-sized activations a block keeps for
backward. [`layernorm_linear`] and [`gelu_linear`] store only x and h and recompute the LayerNorm and the GELU,
elementwise work, in backward. The forward pass runs the very same ops, so outputs are unchanged; gradients are the
same math in the same order.

Limitation: the recomputing autograd functions are first-order only (a double backward raises) and have no
`torch.func` rules. Callers take them only in training (`recompute=True`); outside training, under
`torch.func` transforms and under `torch.compile` (whose partitioner makes its own recompute choices) the plain
modules run, so second-order gradients and `torch.func` work there.

The fused functions read the layers' parameters and never call the modules, so they run only for plain layers
(exactly `nn.LayerNorm` and `nn.Linear`, no hooks, see [`is_plain`]): a layer wrapped or replaced (PEFT LoRA,
quantised or parametrised layers) or hooked is called as a module, and computes what it would in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _autocast_state(device_type: str) -> torch.autocast:
    """The autocast context active now on `device_type`, to re-enter in backward."""
    return torch.autocast(
        device_type,
        dtype=torch.get_autocast_dtype(device_type),
        enabled=torch.is_autocast_enabled(device_type),
    )


def _linear_backward(
    grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, needs_grad: tuple[bool, bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `F.linear(inputs, weight, bias)` for inputs, weight and bias, computed in grad_output's dtype
    (the dtype the forward matmul ran in)."""
    dtype = grad_output.dtype
    grad_rows = grad_output.reshape(-1, grad_output.shape[-1])  # (B·T, out)
    grad_inputs = grad_output @ weight.to(dtype) if needs_grad[0] else None  # (B, T, in)
    grad_weight = grad_rows.T @ inputs.to(dtype).reshape(-1, inputs.shape[-1]) if needs_grad[1] else None  # (out, in)
    grad_bias = grad_rows.sum(0) if needs_grad[2] else None  # (out,)
    return grad_inputs, grad_weight, grad_bias


class _LayerNormLinear(torch.autograd.Function):
    """`linear(layer_norm(x))` storing x, not the normalised x."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, weight, bias):
        ctx.autocast = _autocast_state(x.device.type)
        normed = nn.functional.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
        output = nn.functional.linear(normed, weight, bias)
        ctx.save_for_backward(x, norm_weight, norm_bias, weight)
        ctx.eps, ctx.output_dtype = eps, output.dtype
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, norm_weight, norm_bias, weight = ctx.saved_tensors
        needs_x, needs_norm_weight, needs_norm_bias, _, needs_weight, needs_bias = ctx.needs_input_grad
        norm_inputs = (
            x.detach().requires_grad_(needs_x),
            norm_weight.detach().requires_grad_(needs_norm_weight),
            norm_bias.detach().requires_grad_(needs_norm_bias),
        )
        with torch.enable_grad(), ctx.autocast:
            normed = nn.functional.layer_norm(norm_inputs[0], x.shape[-1:], *norm_inputs[1:], ctx.eps)  # recomputed
        needs_normed = needs_x or needs_norm_weight or needs_norm_bias
        grad_normed, grad_weight, grad_bias = _linear_backward(
            grad_output.to(ctx.output_dtype), normed.detach(), weight, (needs_normed, needs_weight, needs_bias)
        )
        grad_norm_inputs = [None, None, None]
        if needs_normed:
            wanted = [tensor for tensor in norm_inputs if tensor.requires_grad]
            found = iter(torch.autograd.grad(normed, wanted, grad_normed))
            grad_norm_inputs = [next(found) if tensor.requires_grad else None for tensor in norm_inputs]
        return *grad_norm_inputs, None, grad_weight, grad_bias


class _GeluLinear(torch.autograd.Function):
    """`linear(gelu(h))` storing h, not gelu(h)."""

    @staticmethod
    def forward(ctx, pre_activation, weight, bias):
        ctx.autocast = _autocast_state(pre_activation.device.type)
        output = nn.functional.linear(nn.functional.gelu(pre_activation), weight, bias)
        ctx.save_for_backward(pre_activation, weight)
        ctx.output_dtype = output.dtype
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        pre_activation, weight = ctx.saved_tensors
        pre_activation = pre_activation.detach().requires_grad_(ctx.needs_input_grad[0])
        with torch.enable_grad(), ctx.autocast:
            activation = nn.functional.gelu(pre_activation)  # recomputed
        grad_activation, grad_weight, grad_bias = _linear_backward(
            grad_output.to(ctx.output_dtype), activation.detach(), weight, ctx.needs_input_grad
        )
        grad_pre_activation = None
        if ctx.needs_input_grad[0]:
            (grad_pre_activation,) = torch.autograd.grad(activation, pre_activation, grad_activation)
        return grad_pre_activation, grad_weight, grad_bias


def recompute_applies(recompute: bool) -> bool:
    """Whether to take the recomputing path: asked for, autograd on, and neither `torch.compile` nor a `torch.func`
    transform (whose gradients these functions do not define) tracing the call."""
    return (
        recompute
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in _MODULE_HOOKS)


def is_plain(module: nn.Module, kind: type[nn.Module]) -> bool:
    """Whether `module` is exactly a `kind` (no subclass, wrapper or parametrisation) with no hook on it and no
    global module hook: then reading its parameters computes what calling it would."""
    if type(module) is not kind or any(getattr(module, name) for name in _MODULE_HOOKS):
        return False
    return not any(getattr(nn.modules.module, name, None) for name in _GLOBAL_HOOKS)


def layernorm_linear(
    x: torch.Tensor, layernorm: nn.LayerNorm, linear: nn.Linear, recompute: bool = True
) -> torch.Tensor:
    """`linear(layernorm(x))`; with `recompute` (and autograd on), the normalised x is recomputed in backward
    instead of stored (plain layers only: others are called as modules)."""
    fused = recompute_applies(recompute) and is_plain(layernorm, nn.LayerNorm) and is_plain(linear, nn.Linear)
    if not fused:
        return linear(layernorm(x))
    return _LayerNormLinear.apply(x, layernorm.weight, layernorm.bias, layernorm.eps, linear.weight, linear.bias)


def gelu_linear(pre_activation: torch.Tensor, linear: nn.Linear, recompute: bool = True) -> torch.Tensor:
    """`linear(gelu(pre_activation))`; with `recompute` (and autograd on), the GELU is recomputed in backward
    instead of stored (a plain `nn.Linear` only: another layer is called as a module)."""
    if not (recompute_applies(recompute) and is_plain(linear, nn.Linear)):
        return linear(nn.functional.gelu(pre_activation))
    return _GeluLinear.apply(pre_activation, linear.weight, linear.bias)


__all__ = ["gelu_linear", "is_plain", "layernorm_linear", "recompute_applies"]
