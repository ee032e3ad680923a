"""Per-sample logit gradients of a network built from Linear layers, from one backward pass.

A Linear layer's output row i depends on its parameters only through ``yᵢ = W aᵢ + b``, so the
gradient of row i's logit is ``∂zᵢ/∂W = gᵢ aᵢᵀ`` and ``∂zᵢ/∂b = gᵢ`` with ``gᵢ = ∂zᵢ/∂yᵢ``. When
rows do not interact (no batch statistics), every ``gᵢ`` comes out of one backward pass of
``Σᵢ zᵢ`` to the layer outputs, and the inputs ``aᵢ`` out of the forward pass. This gives the same
numbers as ``torch.func.vmap(torch.func.grad(...))`` without it: the first ``torch.func.grad``
or ``vjp`` of a process imports ``torch._dynamo`` and sympy, 1.5–1.8 s, a tenth of a full-scope
Adult job. Networks with parameters outside Linear layers, or a Linear layer that does not see
one 2-D batch exactly once per forward pass, are left to the caller (None).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["linear_logit_gradients"]

Params = dict[str, torch.Tensor]


def _linear_layers(network: nn.Module) -> dict[str, nn.Linear] | None:
    """The network's Linear layers by name, or None when some parameter lies outside them."""
    layers = {name: module for name, module in network.named_modules() if isinstance(module, nn.Linear)}
    covered = {f"{name}.{kind}" for name, layer in layers.items() for kind, _ in layer.named_parameters()}
    names = {name for name, _ in network.named_parameters()}
    return layers if layers and names == covered else None


def linear_logit_gradients(network: nn.Module, params: Params, features: torch.Tensor) -> Params | None:
    """``∇_θ zᵢ`` for every row of ``features`` (a dict of (rows, *shape) tensors keyed like
    ``params``), where z is the network's logit under ``params``; None where the network is not
    made of Linear layers applied once to the rows (then use ``vmap(grad)``)."""
    layers = _linear_layers(network)
    if layers is None or features.ndim != 2 or _has_batch_statistics(network):
        return None
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}
    handles = [layer.register_forward_hook(
        lambda _module, inputs, output, name=name: seen[name].append((inputs[0], output)))
        for name, layer in layers.items()]
    try:
        with torch.enable_grad():
            leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
            logits = functional_call(network, leaves, (features,)).reshape(-1)
            if any(len(calls) != 1 or calls[0][0].ndim != 2 for calls in seen.values()):
                return None
            outputs = [seen[name][0][1] for name in layers]
            grads = torch.autograd.grad(logits.sum(), outputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return _assemble(layers, seen, grads, params, int(features.shape[0]))


def _has_batch_statistics(network: nn.Module) -> bool:
    """Whether rows may interact through a normalization layer's batch statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


def _assemble(layers: dict[str, nn.Linear], seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
              grads: tuple[Any, ...], params: Params, rows: int) -> Params:
    per_sample: Params = {}
    for (name, layer), grad_output in zip(layers.items(), grads, strict=True):
        inputs = seen[name][0][0].detach()
        grad_output = torch.zeros(rows, layer.out_features, dtype=inputs.dtype, device=inputs.device) \
            if grad_output is None else grad_output
        per_sample[f"{name}.weight"] = grad_output.unsqueeze(2) * inputs.unsqueeze(1)
        if layer.bias is not None:
            per_sample[f"{name}.bias"] = grad_output
    return {name: per_sample[name] for name in params}
