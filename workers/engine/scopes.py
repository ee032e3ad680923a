"""Where influence is computed: the parameters a correction moves, behind one interface.

``HeadScope`` is the logistic head with the extractor frozen (closed form, float64). The full
network scope lives in :mod:`workers.engine.full_scope`. The pipeline's tracking loop only talks
to :class:`CorrectionScope`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from workers.engine.config import CorrectionSpec, MethodConfig
from workers.engine.influence import HeadProblem, HessianFactor, factorize, fit_head, hessian, influences
from workers.engine.model import HeadModel
from workers.engine.objectives import MeanLogLoss, Objective
from workers.engine.targets import AuditTargets
from workers.engine.unlearning import apply_step

__all__ = ["CorrectionScope", "HeadScope"]


class CorrectionScope(Protocol):
    """The parameters being corrected and the influence machinery at their current value."""

    weights: torch.Tensor

    def polish(self) -> dict[str, Any]:
        """Move to the optimum of the regularized training objective; report how far it was."""

    def target(self) -> tuple[float, torch.Tensor]:
        """Audit target value and gradient at the current parameters."""

    def utility(self) -> tuple[float, torch.Tensor]:
        """Mean audit log-loss and gradient at the current parameters."""

    def prepare(self) -> dict[str, Any]:
        """Factorize (or set up solves with) the Hessian at the current point; diagnostics."""

    def influences(self, gradient: torch.Tensor) -> np.ndarray:
        """gᵢᵀ H⁻¹ ∇f for every training sample, for ∇f = ``gradient``."""

    def step(self, delta: np.ndarray, method: MethodConfig) -> list[str]:
        """Apply the weight change ``delta`` with a Newton step or refit; notes."""

    def current_model(self) -> HeadModel:
        """The model at the current parameters."""

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of (parameters, weights), to undo a step with :meth:`restore`."""

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Go back to a :meth:`snapshot`."""


class HeadScope:
    """The logistic head of the model, extractor frozen."""

    def __init__(self, model: HeadModel, train_features: np.ndarray, train_labels: np.ndarray,
                 targets: AuditTargets, spec: CorrectionSpec) -> None:
        cfg = spec.influence
        device = model.device
        self.model = model
        self.config = cfg
        self.problem = HeadProblem(model.design(train_features),
                                   torch.from_numpy(train_labels).to(device, torch.float64),
                                   cfg.l2_reg, cfg.damping, cfg.chunk_size)
        self.theta = model.theta()
        self.weights = torch.ones(self.problem.n, dtype=torch.float64, device=device)
        objectives: tuple[Objective, MeanLogLoss] = targets.for_model(model)
        self._target, self._utility = objectives
        self._factor: HessianFactor | None = None

    def polish(self) -> dict[str, Any]:
        """Newton-polish the head to the optimum of the regularized objective."""
        self.theta, report = fit_head(self.problem, self.theta, self.weights, self.config.polish_tolerance,
                                      self.config.polish_max_steps, "polish")
        return report.to_dict()

    def target(self) -> tuple[float, torch.Tensor]:
        """Audit target at the current head."""
        return self._target.evaluate(self.theta)

    def utility(self) -> tuple[float, torch.Tensor]:
        """Audit utility at the current head."""
        return self._utility.evaluate(self.theta)

    def prepare(self) -> dict[str, Any]:
        """Cholesky-factorize the damped Hessian at the current head and weights."""
        return {"solver": "cholesky", **self._compute_factor().describe()}

    def _compute_factor(self) -> HessianFactor:
        self._factor = factorize(hessian(self.problem, self.theta, self.weights), "influence")
        return self._factor

    def _require_factor(self) -> HessianFactor:
        return self._factor if self._factor is not None else self._compute_factor()

    def influences(self, gradient: torch.Tensor) -> np.ndarray:
        """Closed-form influences (pᵢ − yᵢ) φᵢᵀ H⁻¹ ∇f."""
        direction = self._require_factor().solve(gradient, "influence")
        values: np.ndarray = influences(self.problem, self.theta, direction).cpu().numpy()
        return values

    def step(self, delta: np.ndarray, method: MethodConfig) -> list[str]:
        """Newton step or exact weighted refit of the head."""
        result = apply_step(self.problem, self.theta, self.weights, delta, self._require_factor(), method)
        self.theta, self.weights = result.theta, result.weights
        self._factor = None
        return result.notes

    def current_model(self) -> HeadModel:
        """The model with the current head."""
        return self.model.with_theta(self.theta)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the head and the weights."""
        return self.theta.clone(), self.weights.clone()

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Go back to a snapshot."""
        self.theta, self.weights = snapshot[0].clone(), snapshot[1].clone()
        self._factor = None
