"""The interface every network unlearning method implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from workers.engine.config import MethodConfig
from workers.engine.io.architecture import ArchSpec

__all__ = ["MethodOutcome", "NetworkMethod", "NetworkTask"]


@dataclass
class NetworkTask:
    """Everything a network method needs.

    Attributes:
        arch: the architecture (``arch.linear_indices`` are the Sequential indices of the Linear
            layers; the last one is the head).
        network: a trainable copy of the original model (on ``device``, checkpoint dtype); the
            method may modify it in place.
        original: the original model, frozen (a teacher for distillation methods).
        features: training inputs, shape (n, in_features), on the device, checkpoint dtype.
        labels: 0/1 labels as floats, shape (n,).
        eps: per-sample weights ε (effective weight 1 + ε), float64, shape (n,).
        config: the method's hyperparameters.
        seed: seeds every random choice (initialization, shuffling, noise).
    """

    arch: ArchSpec
    network: nn.Sequential
    original: nn.Sequential
    features: torch.Tensor
    labels: torch.Tensor
    eps: torch.Tensor
    config: MethodConfig
    seed: int

    @property
    def removal(self) -> torch.Tensor:
        """rᵢ = max(0, −εᵢ): how much of sample i to forget."""
        return (-self.eps).clamp_min(0.0)

    @property
    def retained(self) -> torch.Tensor:
        """wᵢ = max(0, 1 + εᵢ): the weight sample i keeps in the retained objective."""
        return (1.0 + self.eps).clamp_min(0.0)


@dataclass
class MethodOutcome:
    """The corrected state dict (same keys, shapes, dtypes as the input) and what happened."""

    state: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    diagnostics: dict[str, float] = field(default_factory=dict)


NetworkMethod = Callable[[NetworkTask], MethodOutcome]
