"""SCRUB (Kurmanji et al., 2023): a student moves away from the original on what is forgotten.

The student starts as the original model; the teacher is the original, frozen. Each epoch
starts, while epoch < ``max_epochs``, with a max-step pass over the rows with removal mass rᵢ > 0
that maximizes Σ rᵢ·KL(teacher‖student); then a min-step pass over the rows with retained weight
wᵢ > 0 minimizes Σ wᵢ·(ℓᵢ + KL(teacher‖student)). KL is between Bernoulli outputs softened by
``temperature``. One Adam optimizer serves both passes, as in the reference implementation.
"""

from __future__ import annotations

import torch

from workers.engine.models.training import correction_mode
from workers.engine.unlearning.methods.base import MethodOutcome, NetworkTask
from workers.engine.unlearning.methods.common import (
    LossFn,
    Trainer,
    WeightedRows,
    bernoulli_kl,
    finish,
    forward,
    make_generator,
    per_sample_bce,
    trainable_from,
)

__all__ = ["apply"]


def _losses(task: NetworkTask) -> tuple[LossFn, LossFn]:
    """The max-step loss −mean(rᵢ·KLᵢ) and the min-step loss mean(wᵢ·(ℓᵢ + KLᵢ))."""
    features, labels = task.features, task.labels.to(task.features.dtype)
    teacher = forward(task.original, features)
    temperature = task.config.temperature

    def divergence(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = task.network(features[index]).reshape(-1)
        return logits, bernoulli_kl(teacher[index], logits, temperature)

    def max_step(index: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        return -(coefficient * divergence(index)[1]).mean()

    def min_step(index: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        logits, kl = divergence(index)
        return (coefficient * (per_sample_bce(logits, labels[index]) + kl)).mean()

    return max_step, min_step


def apply(task: NetworkTask) -> MethodOutcome:
    """Alternate max-steps (first ``max_epochs`` epochs) and min-steps for ``epochs`` epochs.

    Args:
        task: the network, training data, weights ε and configuration.

    Returns:
        The corrected state dict.

    Raises:
        ValueError: every retained weight is zero.
        NonFiniteError: the training produced NaN/Inf.
    """
    config = task.config
    notes: list[str] = []
    retain = WeightedRows.build(task.retained, task.features.dtype)
    forget = WeightedRows.build(task.removal, task.features.dtype) if bool((task.removal > 0).any()) else None
    if forget is None:
        notes.append("no sample has removal mass rᵢ > 0: max-steps skipped")
    generator = make_generator(task.seed)
    trainer = Trainer(task, trainable_from(task, len(task.arch.trainable_units)), generator)
    max_step, min_step = _losses(task)
    correction_mode(task.network)
    diagnostics: dict[str, float] = {}
    for epoch in range(config.epochs):
        if forget is not None and epoch < config.max_epochs:
            diagnostics["last_max_loss"] = trainer.epoch(forget, max_step)
        diagnostics["last_min_loss"] = trainer.epoch(retain, min_step)
    task.network.eval()
    notes.append(f"SCRUB: {config.epochs} epochs, max-steps in the first {config.max_epochs}")
    return finish(task, notes, diagnostics)
