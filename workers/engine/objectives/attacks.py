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


def _step_size(config: AttackConfig) -> tuple[int, float]:
    if config.kind == "fgsm":
        return 1, config.epsilon
    return config.steps, config.step_size or 2.5 * config.epsilon / config.steps


def _attack_batch(model: HeadModel, inputs: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
                  early_stop: bool) -> torch.Tensor:
    """FGSM/PGD from the clean point; with ``early_stop`` each row is left where it is first
    misclassified.

    A row's step depends only on that row (the network is in eval mode), so a row still
    correctly classified takes exactly the full attack's step: every row the full attack breaks
    is broken early-stopped too, and so is a row the full attack passes misclassified and then
    leaves. The rows still standing are kept compact, so a step costs what they cost.
    """
    steps, step_size = _step_size(config)
    delta = torch.zeros_like(inputs)
    standing = torch.arange(inputs.shape[0], device=inputs.device)
    points, target, row_delta = inputs, labels, torch.zeros_like(inputs)
    for _ in range(steps):
        row_delta.requires_grad_(True)
        logits = model.network(points + row_delta).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, row_delta)
        moved = _project(row_delta.detach() + step_size * _ascent_direction(grad, config), config)
        correct = (logits.detach() >= 0) == (target >= 0.5)
        if early_stop and not bool(correct.all()):
            broken = ~correct
            delta[standing[broken]] = row_delta.detach()[broken]
            standing, points, moved = standing[correct], points[correct], moved[correct]
            target = target[correct]
            if standing.numel() == 0:
                return (inputs + delta).detach()
        row_delta = moved
    delta[standing] = row_delta.detach()
    return (inputs + delta).detach()


def attack_inputs(model: HeadModel, features: np.ndarray, labels: np.ndarray,
                  config: AttackConfig, early_stop: bool = False) -> np.ndarray:
    """FGSM/PGD adversarial inputs against ``model`` (the network in its own dtype).

    ``early_stop``: leave each row at the first point where it is misclassified (for robust
    accuracy: at least the full attack's rows are broken, in fewer steps); off for robustness
    targets, whose adversarial log-loss needs the attack's full steps.
    """
    outputs = []
    for start in range(0, features.shape[0], ATTACK_BATCH):
        inputs = torch.from_numpy(features[start : start + ATTACK_BATCH]).to(model.device, model.dtype)
        target = torch.from_numpy(labels[start : start + ATTACK_BATCH]).to(model.device, model.dtype)
        with torch.enable_grad():
            outputs.append(_attack_batch(model, inputs, target, config, early_stop).to("cpu", torch.float64))
    return torch.cat(outputs).numpy() if outputs else features.copy()
