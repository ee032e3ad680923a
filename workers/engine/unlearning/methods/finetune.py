"""CU-k / CF-k: continue training the last k Linear layers on the w-weighted loss.

``layers = 0`` fine-tunes the whole network. With hard weights this is fine-tuning on the retain
set (catastrophic forgetting of the forget set).
"""

from __future__ import annotations

from workers.engine.unlearning.methods.base import MethodOutcome, NetworkTask
from workers.engine.unlearning.methods.common import check_layers, fit_retained, make_generator

__all__ = ["apply"]


def apply(task: NetworkTask) -> MethodOutcome:
    """Fine-tune the last ``config.layers`` Linear layers (0 = all) from the current parameters.

    Args:
        task: the network, training data, weights ε and configuration.

    Returns:
        The corrected state dict.

    Raises:
        ValueError: ``method.layers`` exceeds the number of Linear layers.
        NonFiniteError: the training produced NaN/Inf.
    """
    layers = check_layers(task, allow_zero=True)
    return fit_retained(task, layers, make_generator(task.seed))
