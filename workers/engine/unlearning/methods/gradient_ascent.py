"""NegGrad / NegGrad+: descend on Σ εᵢℓᵢ + alpha·Σ wᵢℓᵢ over the whole network.

The ε-term descends on up-weighted samples and ascends on down-weighted ones: it is the
difference between the target weighted ERM and the original ERM. ``alpha`` = 0 is plain NegGrad
(with hard weights: gradient ascent on the forget set); ``alpha`` > 0 adds the retained loss
(NegGrad+). Each row's coefficient cᵢ = εᵢ + alpha·wᵢ; rows with cᵢ = 0 are skipped.

Ascent is unbounded, so gradients are clipped (``common.MAX_GRAD_NORM``), the number of epochs
is the configured one, and a NaN/Inf loss or parameter stops the method with NonFiniteError.
"""

from __future__ import annotations

from workers.engine.models.training import correction_mode
from workers.engine.unlearning.methods.base import MethodOutcome, NetworkTask
from workers.engine.unlearning.methods.common import (
    Trainer,
    WeightedRows,
    finish,
    make_generator,
    trainable_from,
    weighted_task_loss,
)

__all__ = ["apply"]


def apply(task: NetworkTask) -> MethodOutcome:
    """Minimize the mean of (εᵢ + alpha·wᵢ)·ℓᵢ with Adam for ``config.epochs`` epochs.

    Args:
        task: the network, training data, weights ε and configuration.

    Returns:
        The corrected state dict.

    Raises:
        ValueError: every coefficient is zero (no weights and alpha = 0).
        NonFiniteError: the ascent diverged to NaN/Inf.
    """
    coefficient = task.eps + task.config.alpha * task.retained
    rows = WeightedRows.build(coefficient, task.features.dtype)
    generator = make_generator(task.seed)
    trainer = Trainer(task, trainable_from(task, len(task.arch.trainable_units)), generator)
    loss = weighted_task_loss(task)
    correction_mode(task.network)
    last = 0.0
    for _ in range(task.config.epochs):
        last = trainer.epoch(rows, loss)
    task.network.eval()
    notes = [f"gradient descent on Σ(εᵢ + {task.config.alpha:g}·wᵢ)ℓᵢ for {task.config.epochs} epochs"]
    return finish(task, notes, {"final_loss": last, "rows": float(rows.count)})
