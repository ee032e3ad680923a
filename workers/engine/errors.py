"""Exceptions raised by the engine.

Every error says what to change. The tree::

    EngineError (ValueError)
    ├── InputError            bad user input: spec, architecture, dataset, checkpoint
    │   ├── CheckpointError   not a valid safetensors checkpoint for the architecture
    │   └── DatasetError      missing columns, non-numeric features, bad labels, empty groups
    ├── NumericalError        a computation could not be trusted
    │   ├── NonFiniteError    NaN/Inf produced; names the stage
    │   └── IllConditionedError  a Hessian is not positive definite after damping
    ├── InfeasibleError       the requested reduction cannot be reached under the constraints
    └── CorrectionCanceled    the caller asked to stop between stages
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CorrectionCanceled",
    "DatasetError",
    "EngineError",
    "IllConditionedError",
    "InfeasibleError",
    "InputError",
    "NonFiniteError",
    "NumericalError",
]


class EngineError(ValueError):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"


class InputError(EngineError):
    """The job's input (spec, architecture, dataset or checkpoint) is not acceptable."""

    code = "invalid_input"


class CheckpointError(InputError):
    """The checkpoint is not a safetensors file matching the declared architecture."""

    code = "invalid_checkpoint"


class DatasetError(InputError):
    """A dataset does not match its schema or cannot be used for the job."""

    code = "invalid_dataset"


class NumericalError(EngineError):
    """A numerical stage produced a result that cannot be trusted."""

    code = "numerical_error"


class NonFiniteError(NumericalError):
    """NaN or Inf appeared; ``stage`` names where."""

    code = "non_finite"

    def __init__(self, stage: str, what: str) -> None:
        super().__init__(f"non-finite values (NaN/Inf) in {what} at stage '{stage}'")
        self.stage = stage


class IllConditionedError(NumericalError):
    """A Hessian is not numerically positive definite; raise the damping or l2_reg."""

    code = "ill_conditioned"


class InfeasibleError(EngineError):
    """The requested target reduction is not reachable under the weight constraints."""

    code = "infeasible"

    def __init__(self, message: str, max_reduction: float) -> None:
        super().__init__(message)
        self.max_reduction = max_reduction


class CorrectionCanceled(EngineError):
    """The correction was canceled between stages."""

    code = "canceled"
