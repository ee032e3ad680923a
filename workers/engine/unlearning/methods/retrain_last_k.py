"""EU-k: re-initialize the last k Linear layers and retrain them on the w-weighted loss.

Layers before the k-th Linear layer from the end stay frozen. With hard weights (wᵢ = 0 on the
forget set) this is exactly retraining on the retain set, for the same seed.
"""

from __future__ import annotations

from workers.engine.unlearning.methods.base import MethodOutcome, NetworkTask
from workers.engine.unlearning.methods.common import (
    check_layers,
    fit_retained,
    make_generator,
    reinitialize_from,
)

__all__ = ["apply"]


def apply(task: NetworkTask) -> MethodOutcome:
    """Retrain the last ``config.layers`` Linear layers from a seeded initialization.

    Args:
        task: the network, training data, weights ε and configuration.

    Returns:
        The corrected state dict.

    Raises:
        ValueError: ``method.layers`` is not between 1 and the number of Linear layers.
        NonFiniteError: the training produced NaN/Inf.
    """
    layers = check_layers(task, allow_zero=False)
    generator = make_generator(task.seed)
    reinitialize_from(task, layers, generator)
    return fit_retained(task, layers, generator)
