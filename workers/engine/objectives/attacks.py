"""Adversarial attacks used as robustness targets and for robust accuracy.

* ``reflect_linear`` (the paper's construction, METHOD.md §4): in head-feature space, move each
  point along the head's weight direction to ``−(κ−1)`` times its margin. It has no budget: at the
  model it is crafted for, every prediction flips.
* ``fgsm`` / ``pgd``: in input space, through the whole network, within an L∞ or L2 ball of
  radius ε around each input; deterministic (PGD starts at the clean point).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from workers.engine.config import AttackConfig
from workers.engine.models.head_model import HeadModel

__all__ = ["attack_inputs", "reflect_linear"]

ATTACK_BATCH = 8192


def reflect_linear(design: torch.Tensor, theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """Reflect head features across the boundary of ``theta`` (bias column kept at 1)."""
    weight = torch.cat([theta[:-1], torch.zeros(1, dtype=theta.dtype, device=theta.device)])
    norm2 = float(weight @ weight)
    if norm2 == 0.0:
        return design.clone()
    margins = design @ theta
    return design - kappa * (margins / norm2).unsqueeze(1) * weight


def _per_sample_norm(values: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample over all non-batch dims, shaped to broadcast (``[n, 1, ...]``)."""
    norms: torch.Tensor = values.flatten(1).norm(dim=1).clamp_min(1e-12)
    return norms.reshape(-1, *([1] * (values.dim() - 1)))


def _project(delta: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    if config.norm == "linf":
        clamped: torch.Tensor = delta.clamp(-config.epsilon, config.epsilon)
        return clamped
    norms = _per_sample_norm(delta)
    scaled: torch.Tensor = delta * (config.epsilon / norms).clamp(max=1.0)
    return scaled


def _ascent_direction(grad: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    if config.norm == "linf":
        signs: torch.Tensor = grad.sign()
        return signs
    unit: torch.Tensor = grad / _per_sample_norm(grad)
    return unit


def _attack_batch(model: HeadModel, inputs: torch.Tensor, labels: torch.Tensor,
                  config: AttackConfig) -> torch.Tensor:
    steps = 1 if config.kind == "fgsm" else config.steps
    step_size = config.epsilon if config.kind == "fgsm" else config.step_size or 2.5 * config.epsilon / steps
    delta = torch.zeros_like(inputs)
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model.network(inputs + delta).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = _project(delta.detach() + step_size * _ascent_direction(grad, config), config)
    return (inputs + delta).detach()


def attack_inputs(model: HeadModel, features: np.ndarray, labels: np.ndarray,
                  config: AttackConfig) -> np.ndarray:
    """FGSM/PGD adversarial inputs against ``model`` (the network in its own dtype)."""
    outputs = []
    for start in range(0, features.shape[0], ATTACK_BATCH):
        inputs = torch.from_numpy(features[start : start + ATTACK_BATCH]).to(model.device, model.dtype)
        target = torch.from_numpy(labels[start : start + ATTACK_BATCH]).to(model.device, model.dtype)
        with torch.enable_grad():
            outputs.append(_attack_batch(model, inputs, target, config).to("cpu", torch.float64))
    return torch.cat(outputs).numpy() if outputs else features.copy()
