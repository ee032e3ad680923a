"""A wrong rebuild is refused, not guessed: the rebuilt model must reproduce the user's logits.

A dataset may carry, in the column its schema names ``reference_logits``, the logits the user's
own model gives each row. The engine rebuilds the model from the checkpoint and the architecture,
runs it on the same rows and refuses the job when the two disagree beyond a tolerance: the
architecture names another activation, the feature columns are in another order or scaled
differently than at training, or the checkpoint is another model's. The message gives the largest
difference and, where it can tell, which activation would have matched.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from workers.engine.errors import InputError
from workers.engine.io.architecture import ACTIVATIONS
from workers.engine.io.datasets import Dataset
from workers.engine.models.head_model import HeadModel

__all__ = ["REFERENCE_ATOL", "REFERENCE_RTOL", "check_reference_logits"]

REFERENCE_ATOL = 1e-3
"""Absolute tolerance on a logit (float32 models agree to ~1e-5 when rebuilt right)."""
REFERENCE_RTOL = 1e-3
"""Relative tolerance on a logit, for large logits."""
PROBE_ROWS = 512
"""Rows used to try the other activations when the rebuild disagrees."""


def _beyond(rebuilt: np.ndarray, reference: np.ndarray) -> np.ndarray:
    tolerance = REFERENCE_ATOL + REFERENCE_RTOL * np.abs(reference)
    off: np.ndarray = np.abs(rebuilt - reference) > tolerance
    return off


def _matching_activation(model: HeadModel, data: Dataset) -> str | None:
    """Another activation under which the same checkpoint reproduces the reference, if any."""
    assert data.reference_logits is not None
    if not model.arch.uses_activation:
        return None
    rows = slice(0, PROBE_ROWS)
    for activation in ACTIVATIONS:
        if activation == model.arch.activation:
            continue
        other = HeadModel.from_state(dataclasses.replace(model.arch, activation=activation), model.state,
                                     model.device)
        rebuilt = other.logits(data.features[rows]).cpu().numpy()
        if not _beyond(rebuilt, data.reference_logits[rows]).any():
            return activation
    return None


def check_reference_logits(model: HeadModel, data: Dataset) -> dict[str, float] | None:
    """Refuse ``model`` if it does not reproduce ``data``'s reference logits; the agreement if it does.

    Raises:
        InputError: the largest difference, the share of rows off, and the likely causes.
    """
    if data.reference_logits is None:
        return None
    reference = data.reference_logits
    rebuilt = (model.logits_of_embedded(data.features) if data.embedded else model.logits(data.features)
               ).cpu().numpy()
    difference = np.abs(rebuilt - reference)
    off = _beyond(rebuilt, reference)
    if not off.any():
        return {"rows": float(reference.shape[0]), "max_abs_difference": float(difference.max())}
    worst = int(np.argmax(difference))
    matching = None if data.embedded else _matching_activation(model, data)
    hint = (f"the logits match activation {matching!r}, but the architecture says "
            f"{model.arch.activation!r}: pass the architecture the model was built with"
            if matching is not None else
            f"likely causes: another activation than architecture.activation {model.arch.activation!r}; "
            "feature columns in another order than the model was trained on (name them in "
            "schema.features, or save the checkpoint with its feature names); preprocessing "
            "(scaling, encoding) other than at training; or another checkpoint than the one that "
            "produced the logits")
    raise InputError(
        f"{data.name}: the rebuilt model does not reproduce the reference logits in column "
        f"{data.reference_column!r}: "
        f"largest difference {difference[worst]:.4g} at row {worst} (reference {reference[worst]:.4g}, "
        f"rebuilt {rebuilt[worst]:.4g}); {off.mean():.1%} of {reference.shape[0]} rows differ by more "
        f"than {REFERENCE_ATOL:g} + {REFERENCE_RTOL:g}·|logit|; {hint}")
