"""Correction scope over every parameter of the MLP (``influence.scope = 'full'``).

Targets are written as differentiable functions of the network's audit outputs (the same
surrogates as the head scope: soft-rate gaps, mean log-loss, mean log-loss on the frozen
adversarial inputs) and differentiated with autograd; influences and Newton steps use
:class:`workers.engine.influence.full.FullInfluence` (exact / CG / LiSSA / EK-FAC inverse-HVPs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workers.engine.config import CorrectionSpec, MethodConfig
from workers.engine.influence.full import FullInfluence, flat_to_state, objective_gradient
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.targets import AuditTargets

__all__ = ["FullScope", "soft_gap", "span_basis"]

NO_POLISH_REASON = (
    "not polished: a ReLU network's loss has kinks where hidden units switch, so Newton polishing "
    "stalls at about one sample's gradient (measured on the Adult MLP: 10 Gauss-Newton steps took "
    "7 minutes and raised the audit log-loss); influence is taken at the trained parameters with "
    "the positive-definite Gauss-Newton curvature, and the step applies only the weight change"
)

TargetFn = Callable[[nn.Module], torch.Tensor]


def _rate_gap(proba: torch.Tensor, masks: dict[str, torch.Tensor], privileged: str | None) -> torch.Tensor:
    rates = {name: proba[mask].mean() for name, mask in masks.items()}
    if privileged is not None:
        rest = torch.zeros_like(masks[privileged])
        for name, mask in masks.items():
            if name != privileged:
                rest |= mask
        return rates[privileged] - proba[rest].mean()
    top = max(rates, key=lambda name: float(rates[name].detach()))
    bottom = min(rates, key=lambda name: float(rates[name].detach()))
    return rates[top] - rates[bottom]


def soft_gap(metric: str, proba: torch.Tensor, labels: np.ndarray, groups: np.ndarray,
             privileged: str | None) -> torch.Tensor:
    """The soft fairness gap of ``metric`` from probabilities, differentiable (as GroupGap)."""
    conditions = {"demographic_parity": [np.ones_like(labels, dtype=bool)],
                  "equal_opportunity": [labels == 1],
                  "equalized_odds": [labels == 1, labels == 0]}[metric]
    total = proba.new_zeros(())
    for keep in conditions:
        masks = {str(g): torch.from_numpy((groups == g) & keep).to(proba.device)
                 for g in sorted(set(groups[keep].tolist()))}
        gap = _rate_gap(proba, masks, privileged)
        total = total + (gap if len(conditions) == 1 else gap.abs())
    return total


SPAN_RTOL = 1e-12
"""Singular values below this fraction of the largest are dropped from a span's basis."""


def span_basis(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(basis, coefficients)`` with ``columns ≈ basis @ coefficients`` and as few basis columns
    as the rank (thin SVD; exact up to rounding)."""
    u, sigma, vt = np.linalg.svd(columns, full_matrices=False)
    rank = max(1, int((sigma > SPAN_RTOL * sigma[0]).sum())) if sigma.size and sigma[0] > 0 else 1
    return u[:, :rank] * sigma[:rank], vt[:rank]


@dataclass(frozen=True)
class SolvedSpan:
    """Solves the frontier made: ``solutions[:, j] = (H + δI)⁻¹ Σᵢ basis[i, j] gᵢ`` at the
    ``parameters`` and ``weights`` they were made at."""

    basis: np.ndarray
    solutions: torch.Tensor
    parameters: torch.Tensor
    weights: torch.Tensor


def _step_note(info: dict[str, Any]) -> str:
    """What the report's notes say of a full Newton step's solve."""
    residual = info.get("relative_residual")
    accuracy = "EK-FAC approximate curvature" if residual is None else f"relative residual {residual:.1e}"
    sketch = info.get("preconditioner")
    if info.get("reused"):
        how = f"{info['solver']}, reusing the frontier's solves (its delta lies in their span)"
    elif sketch:
        how = (f"{info['solver']} ({info['iterations']} products, preconditioned by a "
               f"{sketch['rows']}-row sketch)")
    else:
        how = info["solver"]
    return f"full Newton step solved by {how} ({accuracy}, damping {info['damping']:.3g})"


def _logits(network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = network(inputs).reshape(-1)
    return out


class FullScope:
    """All parameters of the network; influence by per-sample gradients and inverse HVPs."""

    def __init__(self, model: HeadModel, train_features: np.ndarray, train_labels: np.ndarray,
                 targets: AuditTargets, spec: CorrectionSpec) -> None:
        targets.for_model(model)  # validates the groups the target needs, as the head scope does
        device = model.device
        self.model, self.spec, self.targets = model, spec, targets
        self.weights = torch.ones(train_labels.shape[0], dtype=torch.float64, device=device)
        self.engine = FullInfluence(model.network, torch.from_numpy(train_features).to(device),
                                    torch.from_numpy(train_labels).to(device), self.weights,
                                    spec.influence)
        self._audit = torch.from_numpy(targets.audit.features).to(device, torch.float64)
        self._audit_labels = torch.from_numpy(targets.audit.labels).to(device, torch.float64)
        self._target_fn = self._build_target()
        self._solved_span: SolvedSpan | None = None

    def _build_target(self) -> TargetFn:
        objective = self.spec.objective
        if objective.metric == "robustness":
            return self._adversarial_loss()
        audit, groups = self.targets.audit, self.targets.audit.sensitive[self.targets.sensitive]
        return lambda net: soft_gap(objective.metric, torch.sigmoid(_logits(net, self._audit)),
                                    audit.labels, groups, objective.privileged_group)

    def _adversarial_loss(self) -> TargetFn:
        """Mean log-loss on the audit points attacked *now*, against the current network (the
        robustness target is adaptive; the points are then held fixed for its gradient)."""
        adversarial = torch.as_tensor(self.targets.adversarial_inputs(self.current_model()),
                                      device=self._audit.device, dtype=torch.float64)
        labels = self._audit_labels
        return lambda net: F.binary_cross_entropy_with_logits(_logits(net, adversarial), labels)

    def _utility_fn(self, net: nn.Module) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(_logits(net, self._audit), self._audit_labels)

    def _evaluate(self, fn: TargetFn) -> tuple[float, torch.Tensor]:
        network = self.engine.to_network()
        with torch.no_grad():
            value = float(fn(network))
        return value, objective_gradient(network, fn)

    def polish(self) -> dict[str, Any]:
        """Report the gradient norm at the trained parameters; the network is not moved."""
        norm = float(self.engine.gradient("polish").norm())
        return {"policy": self.spec.influence.polish, "applied": False, "mode": "tilted",
                "newton_steps": 0, "gradient_norm_before": norm, "gradient_norm_after": norm,
                "converged": False, "note": NO_POLISH_REASON}

    def target(self) -> tuple[float, torch.Tensor]:
        """Audit target and its gradient over all parameters."""
        if self.spec.objective.metric == "robustness":
            return self._evaluate(self._adversarial_loss())
        return self._evaluate(self._target_fn)

    def utility(self) -> tuple[float, torch.Tensor]:
        """Mean audit log-loss and its gradient over all parameters."""
        return self._evaluate(self._utility_fn)

    def prepare(self) -> dict[str, Any]:
        """Nothing to factorize up front; solves report their own diagnostics."""
        return {"solver": self.engine.solver, "solver_reason": self.engine.solver_reason,
                "parameters": self.engine.parameter_count, "damping": self.engine.damping}

    def influences(self, gradients: list[torch.Tensor]) -> list[np.ndarray]:
        """gᵢᵀ (H + δI)⁻¹ ∇f for every training sample, for each ∇f of ``gradients``."""
        out = []
        for gradient in gradients:
            direction, _ = self.engine.solve(gradient, "influence")
            out.append(self.engine.per_sample_dot(direction, "influence").cpu().numpy())
        return out

    def step(self, delta: np.ndarray, method: MethodConfig) -> list[str]:
        """Influence Newton step θ' = θ − H⁻¹ Σ εᵢgᵢ over all parameters (H of the current
        weights, or of the new ones with ``hessian='reweighted'``)."""
        eps = torch.from_numpy(delta).to(self.weights)
        rhs = self.engine.weighted_gradient_sum(eps, "unlearn")
        reused = None if method.hessian == "reweighted" else self._from_solved_span(delta, rhs)
        self.weights = self.weights + eps
        if method.hessian == "reweighted":
            self.engine.set_weights(self.weights)
        solution, info = reused or self.engine.solve(rhs, "unlearn")
        self.engine.set_parameters(self.engine.flat_parameters() - solution)
        self.engine.set_weights(self.weights)
        return [_step_note(info)]

    def _from_solved_span(self, delta: np.ndarray, rhs: torch.Tensor,
                          ) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """The step's solve from the frontier's, when ``delta`` lies in the span the frontier solved
        at these very parameters and weights (a soft job's delta is a multiple of its soft points'):
        the same linear combination of solutions, checked by its own residual (one product)."""
        span = self._solved_span
        if span is None or not (torch.equal(span.parameters, self.engine.flat_parameters())
                                and torch.equal(span.weights, self.weights)):
            return None
        coefficients = np.linalg.lstsq(span.basis, delta, rcond=None)[0]
        if np.linalg.norm(span.basis @ coefficients - delta) > SPAN_RTOL ** 0.5 * np.linalg.norm(delta):
            return None
        solution = span.solutions @ torch.from_numpy(coefficients).to(span.solutions)
        return solution, {"solver": self.engine.solver, "damping": self.engine.damping, "iterations": 0,
                          "reused": True,
                          "relative_residual": self.engine.relative_residual(solution, rhs, "unlearn")}

    def trial_models(self, deltas: list[np.ndarray], method: MethodConfig) -> list[HeadModel]:
        """The networks after a Newton step with each of ``deltas``, leaving the scope where it is.

        With the original Hessian a step −H⁻¹Σεᵢgᵢ is linear in ε, so the steps are solved on a
        basis of the deltas' span (the soft schemes' deltas at different ρ are multiples of one
        vector): one pass of per-sample gradients and one solve per basis vector serve every
        point. The solves skip their residual diagnostic (one Hessian-vector product over the
        training set each), since each point's realized metrics are measured anyway.
        """
        if method.hessian == "reweighted":
            return [self._trial_reweighted(delta, method) for delta in deltas]
        basis, coefficients = span_basis(np.stack(deltas, axis=1))
        sums = self.engine.weighted_gradient_sums(torch.from_numpy(basis).to(self.weights), "frontier")
        solved = torch.stack([self.engine.solve(sums[:, j], "frontier", check_residual=False)[0]
                              for j in range(basis.shape[1])], dim=1)
        self._solved_span = SolvedSpan(basis, solved, self.engine.flat_parameters(), self.weights.clone())
        steps = solved @ torch.from_numpy(coefficients).to(solved)
        flat = self.engine.flat_parameters()
        return [self._model_at(flat - steps[:, j]) for j in range(len(deltas))]

    def _trial_reweighted(self, delta: np.ndarray, method: MethodConfig) -> HeadModel:
        snapshot = self.snapshot()
        try:
            self.step(delta, method)
            return self.current_model()
        finally:
            self.restore(snapshot)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the flat parameters and the weights."""
        return self.engine.flat_parameters(), self.weights.clone()

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Go back to a snapshot."""
        self.weights = snapshot[1].clone()
        self.engine.set_parameters(snapshot[0])
        self.engine.set_weights(self.weights)

    def current_model(self) -> HeadModel:
        """The model at the current parameters, in the checkpoint's dtype."""
        return self._model_at(self.engine.flat_parameters())

    def _model_at(self, flat: torch.Tensor) -> HeadModel:
        state = flat_to_state(self.engine.network, flat)
        cast = {key: value.to("cpu", self.model.dtype) for key, value in state.items()}
        # Buffers (a resnet's BatchNorm statistics) are not parameters: they stay the model's.
        state = {**self.model.state, **self.model.arch.to_external(cast)}
        return HeadModel.from_state(self.model.arch, state, self.model.device)
