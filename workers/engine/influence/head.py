"""Influence functions of the logistic head, in closed form and float64.

The head objective is ``L(θ; w) = Σᵢ wᵢ ℓ(zᵢ; θ) + (λ/2)‖θ_w‖²`` with ℓ the log-loss (sum form,
bias unregularized).
Per-sample gradients are ``gᵢ = (pᵢ − yᵢ) φᵢ`` and the Hessian is the Gram form
``H = Φᵀ diag(w p(1−p)) Φ + λ diag(mask) + δ I`` with ``δ`` the damping. Everything is accumulated
over chunks of rows, so memory stays O(chunk·d + d²): no n×d×d tensor, no n×d gradient matrix.
The influence of sample i on a target f is ``I_f(i) = gᵢᵀ H⁻¹ ∇f``: the predicted change of f when
sample i is removed (METHOD.md §1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.nn import functional as F

from workers.engine.errors import IllConditionedError, NonFiniteError

__all__ = [
    "FitReport",
    "HeadProblem",
    "HessianFactor",
    "factorize",
    "fit_head",
    "influences",
    "tilt_at",
    "weighted_gradient_sum",
]

Loss = Literal["logistic", "squared"]
"""The head's loss: logistic for the product; squared (ridge) to test the machinery where a
Newton step is exact."""

MAX_CONDITION = 1e13
"""Largest condition number of a damped Hessian we accept for influence solves."""


@dataclass
class HeadProblem:
    """Training data of the head: design matrix Φ (n×m, last column ones) and 0/1 labels."""

    design: torch.Tensor
    labels: torch.Tensor
    l2_reg: float
    damping: float = 0.0
    chunk_size: int = 8192
    loss: Loss = "logistic"
    tilt: torch.Tensor | None = None
    """g₀ of the tilted objective L(θ; w) − g₀ᵀθ (None: untilted); see :func:`tilt_at`."""
    reg_mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        mask = torch.ones(self.design.shape[1], dtype=torch.float64, device=self.design.device)
        mask[-1] = 0.0
        self.reg_mask = mask

    @property
    def n(self) -> int:
        """Number of training rows."""
        return int(self.design.shape[0])

    def residual(self, rows: slice, theta: torch.Tensor) -> torch.Tensor:
        """dℓ/dz for the rows: p − y (logistic) or z − y (squared)."""
        logits = self.design[rows] @ theta
        prediction = torch.sigmoid(logits) if self.loss == "logistic" else logits
        return prediction - self.labels[rows]

    def curvature(self, rows: slice, theta: torch.Tensor) -> torch.Tensor:
        """d²ℓ/dz² for the rows: p(1 − p) (logistic) or 1 (squared)."""
        logits = self.design[rows] @ theta
        if self.loss == "squared":
            return torch.ones_like(logits)
        p = torch.sigmoid(logits)
        return p * (1 - p)

    def losses(self, rows: slice, theta: torch.Tensor) -> torch.Tensor:
        """Per-row loss: log-loss from logits, or ½(z − y)²."""
        logits = self.design[rows] @ theta
        if self.loss == "squared":
            return 0.5 * (logits - self.labels[rows]) ** 2
        return F.binary_cross_entropy_with_logits(logits, self.labels[rows], reduction="none")

    def chunks(self) -> Iterator[slice]:
        """Row slices of at most ``chunk_size`` rows."""
        for start in range(0, self.n, self.chunk_size):
            yield slice(start, min(start + self.chunk_size, self.n))


def _check_finite(tensor: torch.Tensor, stage: str, what: str) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(stage, what)
    return tensor


def objective(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor) -> float:
    """``Σ wᵢ ℓᵢ + (λ/2)‖θ_w‖²`` with a numerically stable log-loss."""
    total = 0.0
    for rows in problem.chunks():
        total += float(weights[rows] @ problem.losses(rows, theta))
    if problem.tilt is not None:
        total -= float(problem.tilt @ theta)
    return total + 0.5 * problem.l2_reg * float((problem.reg_mask * theta) @ theta)


def gradient(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """∇L(θ; w) = Φᵀ(w ⊙ (p − y)) + λ mask ⊙ θ."""
    total = problem.l2_reg * problem.reg_mask * theta
    if problem.tilt is not None:
        total = total - problem.tilt
    for rows in problem.chunks():
        total = total + problem.design[rows].T @ (weights[rows] * problem.residual(rows, theta))
    return total


def tilt_at(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor) -> None:
    """Tilt the objective so that ``theta`` is its exact optimum under ``weights``.

    With g₀ = ∇L(θ₀; w) the tilted objective L̃(θ; w) = L(θ; w) − g₀ᵀθ has the same Hessian,
    is still convex, and ∇L̃(θ₀; w) = 0. Influence, Newton steps and refits on L̃ then describe
    reweighting *about the user's parameters* instead of about a re-fitted head (the first-order
    change of the optimum under a weight change ε is −H⁻¹Σεᵢgᵢ for both objectives).
    """
    problem.tilt = None
    problem.tilt = _check_finite(gradient(problem, theta, weights), "polish", "the head gradient")


def hessian(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Damped Gram-form Hessian ``Φᵀ diag(w p(1−p)) Φ + λ diag(mask) + δ I``."""
    m = problem.design.shape[1]
    total = torch.diag(problem.l2_reg * problem.reg_mask + problem.damping)
    for rows in problem.chunks():
        phi = problem.design[rows]
        scale = weights[rows] * problem.curvature(rows, theta)
        total = total + phi.T @ (scale.unsqueeze(1) * phi)
    return 0.5 * (total + total.T) if m else total


@dataclass(frozen=True)
class HessianFactor:
    """Cholesky factor of a symmetric positive-definite Hessian, with its diagnostics."""

    cholesky: torch.Tensor
    min_eigenvalue: float
    max_eigenvalue: float

    @property
    def condition(self) -> float:
        """Spectral condition number."""
        return self.max_eigenvalue / self.min_eigenvalue

    def solve(self, vector: torch.Tensor, stage: str) -> torch.Tensor:
        """``H⁻¹ v`` by two triangular solves; NaN/Inf are reported with the stage."""
        solution = torch.cholesky_solve(vector.reshape(-1, 1), self.cholesky).reshape(-1)
        return _check_finite(solution, stage, "the inverse-Hessian-vector product")

    def describe(self) -> dict[str, float]:
        """Eigenvalue range and condition number, for the report."""
        return {
            "min_eigenvalue": self.min_eigenvalue,
            "max_eigenvalue": self.max_eigenvalue,
            "condition_number": self.condition,
        }


def factorize(matrix: torch.Tensor, stage: str) -> HessianFactor:
    """Cholesky-factorize a Hessian after checking it is finite and well conditioned.

    Raises:
        NonFiniteError: the Hessian holds NaN/Inf.
        IllConditionedError: not positive definite, or condition number above ``MAX_CONDITION``.
    """
    _check_finite(matrix, stage, "the Hessian")
    eigenvalues = torch.linalg.eigvalsh(matrix)
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    advice = "raise influence.damping or influence.l2_reg"
    if low <= 0:
        raise IllConditionedError(
            f"stage '{stage}': the Hessian is not positive definite (smallest eigenvalue {low:.3e}); "
            f"{advice}, or avoid negative effective weights"
        )
    if high / low > MAX_CONDITION:
        raise IllConditionedError(
            f"stage '{stage}': the Hessian is ill-conditioned (condition number {high / low:.3e} > "
            f"{MAX_CONDITION:.0e}); {advice}"
        )
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        raise IllConditionedError(f"stage '{stage}': Cholesky failed at pivot {int(info)}; {advice}")
    return HessianFactor(cholesky=factor, min_eigenvalue=low, max_eigenvalue=high)


def influences(problem: HeadProblem, theta: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``gᵢᵀ v`` for every training row, with ``v = H⁻¹∇f`` already solved: (pᵢ − yᵢ)(φᵢᵀ v)."""
    parts = []
    for rows in problem.chunks():
        parts.append(problem.residual(rows, theta) * (problem.design[rows] @ direction))
    return _check_finite(torch.cat(parts), "influence", "per-sample influences")


def weighted_gradient_sum(problem: HeadProblem, theta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``Σᵢ εᵢ gᵢ`` without forming the per-sample gradients."""
    total = torch.zeros_like(theta)
    for rows in problem.chunks():
        total = total + problem.design[rows].T @ (eps[rows] * problem.residual(rows, theta))
    return total


@dataclass(frozen=True)
class FitReport:
    """How a Newton fit of the head went."""

    steps: int
    gradient_norm_before: float
    gradient_norm_after: float
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the report."""
        return {
            "newton_steps": self.steps,
            "gradient_norm_before": self.gradient_norm_before,
            "gradient_norm_after": self.gradient_norm_after,
            "converged": self.converged,
        }


def _newton_line_search(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor,
                        grad: torch.Tensor, direction: torch.Tensor, stage: str,
                        ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Backtrack along the Newton direction: accept sufficient decrease, or, once the decrease
    is below the objective's rounding error, a step that still shrinks the gradient."""
    current = objective(problem, theta, weights)
    slope = float(grad @ direction)
    rounding = 64 * torch.finfo(torch.float64).eps * max(1.0, abs(current))
    step = 1.0
    while step > 1e-10:
        candidate = theta - step * direction
        value = objective(problem, candidate, weights)
        if value <= current - 1e-4 * step * slope:
            return candidate, _check_finite(gradient(problem, candidate, weights), stage,
                                            "the head gradient"), True
        if value <= current + rounding:
            candidate_grad = gradient(problem, candidate, weights)
            if float(candidate_grad.norm()) < float(grad.norm()):
                return candidate, _check_finite(candidate_grad, stage, "the head gradient"), True
        step *= 0.5
    return theta, grad, False


def fit_head(
    problem: HeadProblem,
    theta: torch.Tensor,
    weights: torch.Tensor,
    tolerance: float,
    max_steps: int,
    stage: str,
) -> tuple[torch.Tensor, FitReport]:
    """Minimize ``L(θ; w)`` by damped Newton with backtracking, from ``theta``.

    Convergence: ‖∇L‖ ≤ ``tolerance`` · max(1, Σ|wᵢ|). Weights must be non-negative (the
    objective is then convex).
    """
    scale = max(1.0, float(weights.abs().sum()))
    grad = _check_finite(gradient(problem, theta, weights), stage, "the head gradient")
    before = float(grad.norm())
    steps = 0
    while float(grad.norm()) > tolerance * scale and steps < max_steps:
        factor = factorize(hessian(problem, theta, weights), stage)
        theta, grad, accepted = _newton_line_search(problem, theta, weights, grad,
                                                    factor.solve(grad, stage), stage)
        steps += 1
        if not accepted:
            break
    after = float(grad.norm())
    converged = after <= tolerance * scale or math.isclose(after, 0.0)
    return theta, FitReport(steps, before, after, converged)
