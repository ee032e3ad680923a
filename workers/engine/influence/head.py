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
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.nn import functional as F

from workers.engine.errors import IllConditionedError, NonFiniteError
from workers.engine.models.design import Design, GramAccumulator, blas_threads_like_torch

__all__ = [
    "HESSIAN_REUSE_MAX_LOGIT_CHANGE",
    "FitReport",
    "HeadPass",
    "HeadProblem",
    "HessianFactor",
    "factorize",
    "fit_head",
    "gradients",
    "head_pass",
    "hessian_factor",
    "influences",
    "max_logit_change",
    "tilt_at",
    "weighted_gradient_sum",
]

Loss = Literal["logistic", "squared"]
"""The head's loss: logistic for the product; squared (ridge) to test the machinery where a
Newton step is exact."""

MAX_CONDITION = 1e13
"""Largest condition number of a damped Hessian we accept for influence solves."""
HESSIAN_REUSE_MAX_LOGIT_CHANGE = 1e-5
"""A factorized Hessian serves parameters that move no training logit by more than this, at the
same weights (:func:`hessian_factor`). For the logistic loss ``log pᵢ(1−pᵢ)`` has slope
``1 − 2pᵢ ∈ [−1, 1]`` in zᵢ, so each row's curvature changes by a factor within ``e^{±Δ}`` and so
does ``Φᵀdiag(wc)Φ + λ diag(mask) + δI`` in the positive-semidefinite order: solves with the old
factor are then within ``e^Δ − 1 ≈ 1e-5`` in the Hessian's norm, a tenth of the error the full
scope's CG is allowed (1e-4). It spares the influence stage rebuilding the Hessian the polish
just built a Newton step before (0.7 s at 100 k × 512, where that step moved the logits by at
most 1.9e-6)."""


@dataclass
class HeadProblem:
    """Training data of the head: the design Φ (n×m, bias column implicit) and 0/1 labels."""

    design: Design
    labels: torch.Tensor
    l2_reg: float
    damping: float = 0.0
    loss: Loss = "logistic"
    tilt: torch.Tensor | None = None
    """g₀ of the tilted objective L(θ; w) − g₀ᵀθ (None: untilted); see :func:`tilt_at`."""
    reg_mask: torch.Tensor = field(init=False)
    passes: int = field(default=0, init=False)
    """Passes over the training rows so far (the report's measure of the work done)."""
    grams: int = field(default=0, init=False)
    """Gram matrices (Hessians) built so far."""
    factor_cache: tuple[torch.Tensor, torch.Tensor, HessianFactor] | None = field(default=None, init=False)
    """The last factorized Hessian with the (θ, w) it was built at (:func:`hessian_factor`)."""

    def __post_init__(self) -> None:
        mask = torch.ones(self.design.width, dtype=torch.float64, device=self.design.device)
        mask[-1] = 0.0
        self.reg_mask = mask

    @property
    def n(self) -> int:
        """Number of training rows."""
        return self.design.n

    @property
    def width(self) -> int:
        """Number of head parameters m (features + bias)."""
        return self.design.width

    def chunks(self) -> Iterator[slice]:
        """Row slices of at most the design's chunk size."""
        return self.design.chunks()

    def regularizer(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The ridge term's value and gradient, tilt included."""
        value = 0.5 * self.l2_reg * float((self.reg_mask * theta) @ theta)
        grad = self.l2_reg * self.reg_mask * theta
        if self.tilt is not None:
            value -= float(self.tilt @ theta)
            grad = grad - self.tilt
        return value, grad


@dataclass
class HeadPass:
    """What one pass over the training rows produced (None where not asked for)."""

    objective: float | None = None
    gradient: torch.Tensor | None = None
    hessian: torch.Tensor | None = None


def _row_terms(problem: HeadProblem, logits: torch.Tensor, labels: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss, dℓ/dz and d²ℓ/dz² from the logits."""
    if problem.loss == "squared":
        residual = logits - labels
        return 0.5 * residual**2, residual, torch.ones_like(logits)
    p = torch.sigmoid(logits)
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss, p - labels, p * (1 - p)


def head_pass(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor, *, objective: bool = False,
              gradient: bool = False, hessian: bool = False) -> HeadPass:
    """Objective, gradient and/or damped Hessian of ``L(θ; w)``, in ONE pass over the rows.

    Each chunk of Φ is converted to float64 once and serves every requested quantity.
    """
    problem.passes += 1
    total_loss = 0.0
    grad = torch.zeros(problem.width, dtype=torch.float64, device=theta.device) if gradient else None
    gram = GramAccumulator(problem.width, theta.device) if hessian else None
    with blas_threads_like_torch() if hessian else nullcontext():
        for rows in problem.chunks():
            block = problem.design.chunk_block(rows)
            loss, residual, curvature = _row_terms(problem, block @ theta, problem.labels[rows])
            w = weights[rows]
            if objective:
                total_loss += float(w @ loss)
            if grad is not None:
                grad += block.T @ (w * residual)
            if gram is not None:
                gram.add(block, w * curvature, consume=True)
    value, reg_grad = problem.regularizer(theta)
    out = HeadPass()
    if objective:
        out.objective = total_loss + value
    if grad is not None:
        out.gradient = grad + reg_grad
    if gram is not None:
        problem.grams += 1
        out.hessian = gram.result() + torch.diag(problem.l2_reg * problem.reg_mask + problem.damping)
    return out


def _check_finite(tensor: torch.Tensor, stage: str, what: str) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(stage, what)
    return tensor


def objective(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor) -> float:
    """``Σ wᵢ ℓᵢ + (λ/2)‖θ_w‖²`` with a numerically stable log-loss."""
    value = head_pass(problem, theta, weights, objective=True).objective
    assert value is not None
    return value


def gradient(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """∇L(θ; w) = Φᵀ(w ⊙ (p − y)) + λ mask ⊙ θ."""
    grad = head_pass(problem, theta, weights, gradient=True).gradient
    assert grad is not None
    return grad


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
    matrix = head_pass(problem, theta, weights, hessian=True).hessian
    assert matrix is not None
    return matrix


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
        """``H⁻¹ v`` (``v`` a vector, or a matrix of column vectors) by two triangular solves;
        NaN/Inf are reported with the stage."""
        columns = vector.reshape(vector.shape[0], -1)
        solution = torch.cholesky_solve(columns, self.cholesky).reshape(vector.shape)
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
    """``gᵢᵀ v`` for every training row, with ``v = H⁻¹∇f`` already solved: (pᵢ − yᵢ)(φᵢᵀ v).

    ``direction`` is one vector (an n-vector comes back) or an [m, k] matrix of k of them (an
    [n, k] matrix comes back). One pass: each block gives its logits and every projection.
    """
    problem.passes += 1
    columns = direction.reshape(direction.shape[0], -1)
    both = torch.cat([theta.unsqueeze(1), columns], dim=1)
    parts = []
    for rows in problem.chunks():
        products = problem.design.chunk_block(rows) @ both
        residual = _row_terms(problem, products[:, 0], problem.labels[rows])[1]
        parts.append(residual.unsqueeze(1) * products[:, 1:])
    values = torch.cat(parts) if parts else \
        torch.zeros(0, columns.shape[1], dtype=torch.float64, device=theta.device)
    values = _check_finite(values, "influence", "per-sample influences")
    return values.reshape(-1) if direction.dim() == 1 else values


def gradients(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor,
              changes: list[torch.Tensor]) -> torch.Tensor:
    """∇L(θ; w + εₖ) for each weight change εₖ of ``changes``, as an [m, k] matrix, in one pass
    (the frontier's Newton steps: one weighting per point). The [chunk, k] weights are formed
    per chunk, so nothing n × k is held besides the changes themselves."""
    problem.passes += 1
    total = torch.zeros(problem.width, len(changes), dtype=torch.float64, device=theta.device)
    for rows in problem.chunks():
        block = problem.design.chunk_block(rows)
        residual = _row_terms(problem, block @ theta, problem.labels[rows])[1]
        chunk_weights = weights[rows].unsqueeze(1) + torch.stack([change[rows] for change in changes], dim=1)
        total += block.T @ (chunk_weights * residual.unsqueeze(1))
    return total + problem.regularizer(theta)[1].unsqueeze(1)


def weighted_gradient_sum(problem: HeadProblem, theta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``Σᵢ εᵢ gᵢ`` without forming the per-sample gradients."""
    problem.passes += 1
    total = torch.zeros_like(theta)
    for rows in problem.chunks():
        block = problem.design.chunk_block(rows)
        residual = _row_terms(problem, block @ theta, problem.labels[rows])[1]
        total += block.T @ (eps[rows] * residual)
    return total


@dataclass(frozen=True)
class FitReport:
    """How a Newton fit of the head went."""

    steps: int
    gradient_norm_before: float
    gradient_norm_after: float
    converged: bool
    hessians: int = 0
    """Hessians built and factorized (a step reuses the last one while it converges fast)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the report."""
        return {
            "newton_steps": self.steps,
            "gradient_norm_before": self.gradient_norm_before,
            "gradient_norm_after": self.gradient_norm_after,
            "converged": self.converged,
            "hessians_built": self.hessians,
        }


REUSE_RATE = 0.1
"""A Newton fit keeps its factorized Hessian for the next step while each step cuts the gradient
norm at least this much (‖g′‖ ≤ 0.1‖g‖); a slower step, or one the line search refuses, rebuilds
the Hessian at the current point. Near an optimum the Hessian hardly changes, so one Gram matrix
(the stage's dominant cost) serves several steps."""


@dataclass
class _Point:
    theta: torch.Tensor
    objective: float
    gradient: torch.Tensor

    @property
    def norm(self) -> float:
        return float(self.gradient.norm())


def _evaluate(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor, stage: str) -> _Point:
    """Objective and gradient at ``theta`` in one pass."""
    result = head_pass(problem, theta, weights, objective=True, gradient=True)
    assert result.objective is not None and result.gradient is not None
    if not math.isfinite(result.objective):
        raise NonFiniteError(stage, "the head objective")
    return _Point(theta, result.objective, _check_finite(result.gradient, stage, "the head gradient"))


def _newton_line_search(problem: HeadProblem, weights: torch.Tensor, point: _Point,
                        direction: torch.Tensor, stage: str) -> _Point | None:
    """Backtrack along the Newton direction: accept sufficient decrease, or, once the decrease
    is below the objective's rounding error, a step that still shrinks the gradient. Each trial
    is one pass (objective and gradient together)."""
    slope = float(point.gradient @ direction)
    rounding = 64 * torch.finfo(torch.float64).eps * max(1.0, abs(point.objective))
    step = 1.0
    while step > 1e-10:
        candidate = _evaluate(problem, point.theta - step * direction, weights, stage)
        if candidate.objective <= point.objective - 1e-4 * step * slope:
            return candidate
        if candidate.objective <= point.objective + rounding and candidate.norm < point.norm:
            return candidate
        step *= 0.5
    return None


def max_logit_change(problem: HeadProblem, theta: torch.Tensor, other: torch.Tensor) -> float:
    """``maxᵢ |φᵢᵀ(θ − θ')|`` over the training rows (one pass)."""
    problem.passes += 1
    difference = theta - other
    largest = 0.0
    for rows in problem.chunks():
        largest = max(largest, float((problem.design.chunk_block(rows) @ difference).abs().max()))
    return largest


def hessian_factor(problem: HeadProblem, theta: torch.Tensor, weights: torch.Tensor,
                   stage: str, reuse_within: float = 0.0) -> HessianFactor:
    """The factorized Hessian at (θ, w): the last one built when w is unchanged since and θ is
    too, or (``reuse_within`` > 0) moves no training logit by more than ``reuse_within`` from
    where it was built (:data:`HESSIAN_REUSE_MAX_LOGIT_CHANGE`; the squared loss's Hessian does
    not depend on θ)."""
    cached = problem.factor_cache
    if cached is not None and torch.equal(cached[1], weights) and (
            torch.equal(cached[0], theta) or (reuse_within > 0 and (
                problem.loss == "squared" or max_logit_change(problem, theta, cached[0]) <= reuse_within))):
        return cached[2]
    factor = factorize(hessian(problem, theta, weights), stage)
    problem.factor_cache = (theta.clone(), weights.clone(), factor)
    return factor


def fit_head(
    problem: HeadProblem,
    theta: torch.Tensor,
    weights: torch.Tensor,
    tolerance: float,
    max_steps: int,
    stage: str,
) -> tuple[torch.Tensor, FitReport]:
    """Minimize ``L(θ; w)`` by damped Newton with backtracking, from ``theta``.

    Convergence: ‖∇L‖ ≤ ``tolerance`` · max(1, Σ|wᵢ|), or ``max_steps`` steps, or a step that
    no line search can take even with a fresh Hessian. A factorized Hessian is reused across
    steps while they converge fast (:data:`REUSE_RATE`). Weights must be non-negative (the
    objective is then convex).
    """
    scale = max(1.0, float(weights.abs().sum()))
    point = _evaluate(problem, theta, weights, stage)
    before = point.norm
    steps = built = 0
    factor: HessianFactor | None = None
    while point.norm > tolerance * scale and steps < max_steps:
        fresh = factor is None
        if factor is None:
            factor = hessian_factor(problem, point.theta, weights, stage)
            built += 1
        accepted = _newton_line_search(problem, weights, point, factor.solve(point.gradient, stage), stage)
        if accepted is None and not fresh:
            factor = None
            continue
        if accepted is None:
            break
        steps += 1
        if accepted.norm > REUSE_RATE * point.norm:
            factor = None
        point = accepted
    converged = point.norm <= tolerance * scale or math.isclose(point.norm, 0.0)
    return point.theta, FitReport(steps, before, point.norm, converged, built)
