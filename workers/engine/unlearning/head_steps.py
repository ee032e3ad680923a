"""Unlearning steps on the logistic head with per-sample weights (METHOD.md §6).

* ``newton``: the influence step θ' = θ − H⁻¹ ∇L(θ; w + ε). At an optimum of L(·; w) this is the
  paper's θ − H⁻¹ Σ εᵢ gᵢ; the residual gradient is kept so that repeated steps (target tracking)
  stay exact Newton steps on the reweighted objective. ``hessian='original'`` uses H of L(·; w),
  ``'reweighted'`` the Hessian of L(·; w + ε) (METHOD.md §9.11).
* ``refit``: exact weighted refit (EU-1): Newton iterations on L(·; w + ε) to convergence. The
  objective is only convex for non-negative weights, so negative effective weights are clipped to
  zero (reported) or refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workers.engine.config import MethodConfig
from workers.engine.errors import InputError
from workers.engine.influence.head import (
    FitReport,
    HeadProblem,
    HessianFactor,
    factorize,
    fit_head,
    gradient,
    gradients,
    hessian,
)

__all__ = ["StepResult", "apply_step", "effective_weights", "trial_thetas"]


@dataclass
class StepResult:
    """Parameters after one unlearning step, the weights they correspond to, and notes."""

    theta: torch.Tensor
    weights: torch.Tensor
    fit: FitReport | None = None
    notes: list[str] = field(default_factory=list)


def effective_weights(weights: torch.Tensor, delta: np.ndarray, method: MethodConfig,
                      ) -> tuple[torch.Tensor, list[str]]:
    """``w + ε``, with negative entries clipped or refused where the method needs w ≥ 0."""
    new = weights + torch.from_numpy(delta).to(weights)
    negative = int((new < 0).sum())
    if negative == 0 or method.name == "newton":
        return new, []
    if method.negative_weights == "reject":
        raise InputError(
            f"{negative} samples got negative effective weights, which method '{method.name}' "
            "cannot apply; use weighting.scheme 'qp' (box lower >= -1), method.negative_weights "
            "'clip', or method 'newton'"
        )
    return new.clamp_min(0.0), [f"{negative} negative effective weights clipped to 0 for "
                                f"method '{method.name}'"]


def _newton(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor, new_weights: torch.Tensor,
            factor: HessianFactor, method: MethodConfig) -> torch.Tensor:
    if method.hessian == "reweighted":
        factor = factorize(hessian(problem, theta, new_weights), "unlearn")
    return theta - factor.solve(gradient(problem, theta, new_weights), "unlearn")


def apply_step(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor, delta: np.ndarray,
               factor: HessianFactor, method: MethodConfig) -> StepResult:
    """Apply weight change ``delta`` on top of ``weights`` with the configured method.

    Args:
        problem: head training problem.
        theta: current head parameters (an optimum of L(·; weights), up to tolerance).
        weights: current effective weights w.
        delta: the weight change ε from the weighting scheme.
        factor: Cholesky factor of the Hessian of L(·; weights) at ``theta``.
        method: which step to take, with the refit tolerances.
    """
    new_weights, notes = effective_weights(weights, delta, method)
    if method.name == "newton":
        return StepResult(_newton(problem, theta, weights, new_weights, factor, method), new_weights,
                          notes=notes)
    fitted, report = fit_head(problem, theta, new_weights, method.refit_tolerance,
                              method.refit_max_steps, "unlearn")
    if not report.converged:
        notes.append(f"weighted refit stopped after {report.steps} Newton steps with gradient norm "
                     f"{report.gradient_norm_after:.3e}")
    return StepResult(fitted, new_weights, fit=report, notes=notes)


def trial_thetas(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor, deltas: list[np.ndarray],
                 factor: HessianFactor, method: MethodConfig) -> list[torch.Tensor]:
    """The heads :func:`apply_step` gives for each of ``deltas``, leaving ``theta`` as it is.

    Newton steps on the original Hessian are linear in ε once ``factor`` is known: their
    gradients come from one pass over the rows and one solve serves them all. Other methods
    take their steps one by one.
    """
    if method.name != "newton" or method.hessian != "original" or not deltas:
        return [apply_step(problem, theta, weights, delta, factor, method).theta for delta in deltas]
    changes = [torch.from_numpy(delta).to(weights) for delta in deltas]
    steps = factor.solve(gradients(problem, theta, weights, changes), "unlearn")
    return [theta - steps[:, column] for column in range(len(deltas))]
