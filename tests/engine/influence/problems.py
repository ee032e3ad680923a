"""A shared small full-scope problem: an untrained ReLU MLP on Gaussian inputs with 0/1 labels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workers.engine.io.architecture import ArchSpec
from workers.engine.models.training import build_model

Problem = tuple[nn.Module, torch.Tensor, torch.Tensor]
"""(network, features, labels)."""


def random_problem(rows: int, hidden: tuple[int, ...], inputs: int = 6) -> Problem:
    """A seeded network of ``hidden`` widths and ``rows`` rows of ``inputs`` features."""
    torch.manual_seed(0)
    network = build_model(ArchSpec(inputs, hidden))
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(rows, inputs)))
    labels = torch.from_numpy((rng.random(rows) < 0.4).astype(np.float64))
    return network, features, labels
