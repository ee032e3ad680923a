"""Fisher forgetting (Golatkar et al., 2020): Newton-like steps on the retained objective, then
Gaussian noise shaped by the inverse retained Fisher.

For the parameters θ of the last ``layers`` Linear layers (0 = all), with L(θ) = Σᵢ wᵢℓᵢ:

* F = Σᵢ wᵢ gᵢ², the w-weighted empirical diagonal Fisher (per-sample gradients gᵢ of the
  log-loss by ``torch.func``), computed once at the original parameters;
* ``RETAIN_STEPS`` retain steps θ ← θ − η·∇L/(F + λ): the diagonal Fisher stands in for the
  Hessian, as in Golatkar's scrubbing step towards the retained optimum. A diagonal Newton step
  overshoots when parameters are correlated, so η is found by backtracking from 1 until L
  decreases sufficiently (Armijo), and λ = ``DAMPING``·mean(F);
* noise θ ← θ + √v·ξ, ξ ~ N(0, I) from the seeded generator, with v = ``fisher_alpha``·min(1/(F +
  1e-8), ``MAX_INVERSE_FISHER``): the rule and clamp of the reference implementation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from workers.engine.errors import NonFiniteError
from workers.engine.unlearning.methods.base import MethodOutcome, NetworkTask
from workers.engine.unlearning.methods.common import (
    STAGE,
    check_layers,
    finish,
    forward,
    make_generator,
    per_sample_bce,
    trainable_from,
)

__all__ = ["apply"]

GRADIENT_CHUNK = 4096
"""Rows per vectorized per-sample gradient evaluation (memory ∝ chunk × parameters)."""
RETAIN_STEPS = 10
"""Number of line-searched diagonal Newton steps on the retained objective."""
DAMPING = 1e-3
"""λ of the retain steps, relative to the mean diagonal Fisher entry."""
ARMIJO = 1e-4
MIN_STEP = 1e-6
FISHER_FLOOR = 1e-8
MAX_INVERSE_FISHER = 1e3
"""Largest 1/F used for the noise variance (before scaling by fisher_alpha)."""


def _fisher(task: NetworkTask, named: dict[str, nn.Parameter]) -> list[torch.Tensor]:
    """Σᵢ wᵢ gᵢ² for each parameter of ``named``, from per-sample gradients."""
    network = task.network
    fixed = {k: v.detach() for k, v in network.state_dict().items()}
    weights = task.retained.to(task.features.device, task.features.dtype)
    labels = task.labels.to(task.features.dtype)

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logit = functional_call(network, {**fixed, **params}, (x.unsqueeze(0),)).reshape(())
        return per_sample_bce(logit, y)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    params = {name: fixed[name] for name in named}
    fisher = [torch.zeros_like(value) for value in params.values()]
    for start in range(0, task.features.shape[0], GRADIENT_CHUNK):
        rows = slice(start, start + GRADIENT_CHUNK)
        grads = per_sample(params, task.features[rows], labels[rows])
        w = weights[rows]
        for total, g in zip(fisher, grads.values(), strict=True):
            total += (w.reshape(-1, *([1] * (g.dim() - 1))) * g * g).sum(0)
    return fisher


def _retained_loss(task: NetworkTask) -> torch.Tensor:
    """L = Σᵢ wᵢℓᵢ of the current network (with the autograd graph)."""
    logits = task.network(task.features).reshape(-1)
    weights = task.retained.to(task.features.device, task.features.dtype)
    return (weights * per_sample_bce(logits, task.labels.to(task.features.dtype))).sum()


def _retained_value(task: NetworkTask) -> float:
    """L without gradients."""
    logits = forward(task.network, task.features)
    weights = task.retained.to(task.features.device, task.features.dtype)
    return float((weights * per_sample_bce(logits, task.labels.to(task.features.dtype))).sum())


def _retain_step(task: NetworkTask, params: list[nn.Parameter], fisher: list[torch.Tensor],
                 damping: float) -> float:
    """One backtracking diagonal-Newton step on L; returns the accepted step size (0 if none)."""
    loss = _retained_loss(task)
    gradients = torch.autograd.grad(loss, params)
    directions = [g / (f + damping) for g, f in zip(gradients, fisher, strict=True)]
    slope = float(sum((g * d).sum() for g, d in zip(gradients, directions, strict=True)))
    start, current = [p.detach().clone() for p in params], float(loss.detach())
    step = 1.0
    while step >= MIN_STEP:
        with torch.no_grad():
            for p, p0, d in zip(params, start, directions, strict=True):
                p.copy_(p0 - step * d)
        if _retained_value(task) <= current - ARMIJO * step * slope:
            return step
        step /= 2
    with torch.no_grad():
        for p, p0 in zip(params, start, strict=True):
            p.copy_(p0)
    return 0.0


def _add_noise(params: list[nn.Parameter], fisher: list[torch.Tensor], fisher_alpha: float,
               generator: torch.Generator) -> None:
    """θ += √v·ξ with v = fisher_alpha·min(1/(F + floor), MAX_INVERSE_FISHER)."""
    with torch.no_grad():
        for p, f in zip(params, fisher, strict=True):
            variance = fisher_alpha * (1.0 / (f.double() + FISHER_FLOOR)).clamp_max(MAX_INVERSE_FISHER)
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_((variance.cpu().sqrt() * noise).to(p))


def apply(task: NetworkTask) -> MethodOutcome:
    """Retain steps and inverse-Fisher noise on the last ``config.layers`` Linear layers.

    Args:
        task: the network, training data, weights ε and configuration.

    Returns:
        The corrected state dict.

    Raises:
        ValueError: ``method.layers`` exceeds the number of Linear layers.
        NonFiniteError: the Fisher or the result has NaN/Inf.
    """
    layers = check_layers(task, allow_zero=True)
    chosen = {id(p) for p in trainable_from(task, layers)}
    named = {name: p for name, p in task.network.named_parameters() if id(p) in chosen}
    params = list(named.values())
    fisher = _fisher(task, named)
    if not all(bool(torch.isfinite(f).all()) for f in fisher):
        raise NonFiniteError(STAGE, "the Fisher information")
    damping = DAMPING * float(torch.cat([f.reshape(-1) for f in fisher]).mean())
    before = _retained_value(task)
    steps = [_retain_step(task, params, fisher, damping) for _ in range(RETAIN_STEPS)]
    after = _retained_value(task)
    _add_noise(params, fisher, task.config.fisher_alpha, make_generator(task.seed))
    notes = [f"Fisher forgetting on the last {layers} Linear layer(s): {RETAIN_STEPS} diagonal-Newton "
             f"retain steps, noise with fisher_alpha = {task.config.fisher_alpha:g}"]
    diagnostics = {"retained_loss_before": before, "retained_loss_after": after,
                   "mean_step_size": sum(steps) / len(steps)}
    return finish(task, notes, diagnostics)
