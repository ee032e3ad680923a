"""Where influence is computed: the parameters a correction moves, behind one interface.

``HeadScope`` is the logistic head with the extractor frozen (closed form, float64). The full
network scope lives in :mod:`workers.engine.influence.full_scope`. The pipeline's tracking loop only talks
to :class:`CorrectionScope`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from workers.engine.config import CorrectionSpec, MethodConfig
from workers.engine.influence.head import (
    HESSIAN_REUSE_MAX_LOGIT_CHANGE,
    HeadProblem,
    HessianFactor,
    fit_head,
    hessian_factor,
    influences,
    tilt_at,
)
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.surrogates import MeanLogLoss, Objective
from workers.engine.objectives.targets import AuditTargets
from workers.engine.unlearning.head_steps import apply_step, trial_thetas

__all__ = ["CorrectionScope", "HeadScope"]


class CorrectionScope(Protocol):
    """The parameters being corrected and the influence machinery at their current value."""

    weights: torch.Tensor

    def polish(self) -> dict[str, Any]:
        """Move to the optimum of the regularized training objective when that leaves the model
        as it was (else tilt the objective about the current parameters); report which."""

    def target(self) -> tuple[float, torch.Tensor]:
        """Audit target value and gradient at the current parameters."""

    def utility(self) -> tuple[float, torch.Tensor]:
        """Mean audit log-loss and gradient at the current parameters."""

    def prepare(self) -> dict[str, Any]:
        """Factorize (or set up solves with) the Hessian at the current point; diagnostics."""

    def influences(self, gradients: list[torch.Tensor]) -> list[np.ndarray]:
        """gᵢᵀ H⁻¹ ∇f for every training sample, for each ∇f of ``gradients``."""

    def step(self, delta: np.ndarray, method: MethodConfig) -> list[str]:
        """Apply the weight change ``delta`` with a Newton step or refit; notes."""

    def current_model(self) -> HeadModel:
        """The model at the current parameters."""

    def trial_models(self, deltas: list[np.ndarray], method: MethodConfig) -> list[HeadModel]:
        """The models one :meth:`step` with each of ``deltas`` would give, leaving the scope
        where it is."""

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of (parameters, weights), to undo a step with :meth:`restore`."""

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Go back to a :meth:`snapshot`."""


class HeadScope:
    """The logistic head of the model, extractor frozen."""

    def __init__(self, model: HeadModel, train_features: np.ndarray, train_labels: np.ndarray,
                 targets: AuditTargets, spec: CorrectionSpec, train_embedded: bool = False) -> None:
        cfg = spec.influence
        device = model.device
        self.model = model
        self.config = cfg
        self.problem = HeadProblem(model.head_design(train_features, cfg.chunk_size, train_embedded),
                                   torch.from_numpy(train_labels).to(device, torch.float64),
                                   cfg.l2_reg, cfg.damping)
        self.theta = model.theta()
        self.polished_theta = self.theta
        self.targets = targets
        self.weights = torch.ones(self.problem.n, dtype=torch.float64, device=device)
        objectives: tuple[Objective, MeanLogLoss] = targets.for_model(model)
        self._target, self._utility = objectives
        self._factor: HessianFactor | None = None

    def polish(self) -> dict[str, Any]:
        """Newton-polish the head to the optimum of the regularized objective, if the policy and
        the polish's measured effect on the audit set allow; otherwise tilt the objective so the
        user's head is its optimum (``InfluenceConfig.polish``)."""
        cfg = self.config
        start = self.theta
        report: dict[str, Any] = {"policy": cfg.polish}
        polished = start
        if cfg.polish != "never":
            polished, fit = fit_head(self.problem, start, self.weights, cfg.polish_tolerance,
                                     cfg.polish_max_steps, "polish")
            report.update(fit.to_dict())
        self.polished_theta = polished
        effect = {"log_loss": [self._utility.value(start), self._utility.value(polished)],
                  "accuracy": [self._audit_accuracy(start), self._audit_accuracy(polished)],
                  "target": [self._target_value(start), self._target_value(polished)]}
        report["audit"] = {f"{key}_{when}": pair[i] for key, pair in effect.items()
                           for i, when in enumerate(("before", "after"))}
        exceeded = self._polish_exceeds(effect)
        report["exceeded"] = exceeded
        report["applied"] = cfg.polish == "always" or (cfg.polish == "auto" and not exceeded)
        if report["applied"]:
            self.theta = polished
            report["mode"] = "polished"
        else:
            tilt_at(self.problem, start, self.weights)
            report["mode"] = "tilted"
            report["note"] = (
                "the head was left at the user's parameters and the objective tilted by its gradient "
                "there (L(θ; w) − g₀ᵀθ), so influence and steps are taken about the user's model"
                + (f": polishing would have changed {', '.join(exceeded)} beyond the thresholds"
                   if exceeded else ""))
        return report

    def _audit_accuracy(self, theta: torch.Tensor) -> float:
        logits = self._utility.design @ theta
        return float(((logits >= 0).to(torch.float64) == self._utility.labels).to(torch.float64).mean())

    def _target_value(self, theta: torch.Tensor) -> float:
        if self.targets.adaptive:
            return self.targets.for_model(self.model.with_theta(theta))[0].value(theta)
        return self._target.value(theta)

    def _polish_exceeds(self, effect: dict[str, list[float]]) -> list[str]:
        cfg = self.config
        exceeded = []
        if abs(effect["log_loss"][1] - effect["log_loss"][0]) > cfg.polish_max_log_loss_change:
            exceeded.append("audit log-loss")
        if abs(effect["accuracy"][1] - effect["accuracy"][0]) > cfg.polish_max_accuracy_change:
            exceeded.append("audit accuracy")
        before, after = effect["target"]
        if abs(abs(after) - abs(before)) > cfg.polish_max_target_change * max(abs(before), 1e-12):
            exceeded.append("the audit target")
        return exceeded

    def target(self) -> tuple[float, torch.Tensor]:
        """Audit target at the current head (an adaptive attack is crafted against it)."""
        if self.targets.adaptive:
            return self.targets.for_model(self.current_model())[0].evaluate(self.theta)
        return self._target.evaluate(self.theta)

    def utility(self) -> tuple[float, torch.Tensor]:
        """Audit utility at the current head."""
        return self._utility.evaluate(self.theta)

    def prepare(self) -> dict[str, Any]:
        """Cholesky-factorize the damped Hessian at the current head and weights (or reuse the
        polish's, when it is as good: :data:`HESSIAN_REUSE_MAX_LOGIT_CHANGE`)."""
        built = self.problem.grams
        factor = self._compute_factor()
        return {"solver": "cholesky", **factor.describe(), "hessian_reused": self.problem.grams == built}

    def _compute_factor(self) -> HessianFactor:
        self._factor = hessian_factor(self.problem, self.theta, self.weights, "influence",
                                      HESSIAN_REUSE_MAX_LOGIT_CHANGE)
        return self._factor

    def _require_factor(self) -> HessianFactor:
        return self._factor if self._factor is not None else self._compute_factor()

    def influences(self, gradients: list[torch.Tensor]) -> list[np.ndarray]:
        """Closed-form influences (pᵢ − yᵢ) φᵢᵀ H⁻¹ ∇f, one pass over the rows for them all."""
        directions = self._require_factor().solve(torch.stack(gradients, dim=1), "influence")
        values: np.ndarray = influences(self.problem, self.theta, directions).cpu().numpy()
        return [np.ascontiguousarray(values[:, column]) for column in range(len(gradients))]

    def step(self, delta: np.ndarray, method: MethodConfig) -> list[str]:
        """Newton step or exact weighted refit of the head."""
        result = apply_step(self.problem, self.theta, self.weights, delta, self._require_factor(), method)
        self.theta, self.weights = result.theta, result.weights
        self._factor = None
        return result.notes

    def current_model(self) -> HeadModel:
        """The model with the current head."""
        return self.model.with_theta(self.theta)

    def trial_models(self, deltas: list[np.ndarray], method: MethodConfig) -> list[HeadModel]:
        """The heads after a step with each of ``deltas``; one factorized Hessian serves them all."""
        thetas = trial_thetas(self.problem, self.theta, self.weights, deltas, self._require_factor(), method)
        return [self.model.with_theta(theta) for theta in thetas]

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the head and the weights."""
        return self.theta.clone(), self.weights.clone()

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Go back to a snapshot."""
        self.theta, self.weights = snapshot[0].clone(), snapshot[1].clone()
        self._factor = None
