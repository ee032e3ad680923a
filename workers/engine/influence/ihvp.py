"""Iterative inverse-Hessian-vector products: conjugate gradient, LiSSA, power iteration.

Every solver sees the damped Hessian only through a product ``v ↦ (H + δI) v`` (a *matvec*),
works in the dtype of its input (float64 in the engine) and reports failure with a typed error
that names the stage and says what to change:

- non-finite products or iterates: :class:`NonFiniteError`;
- negative curvature, non-convergence or divergence: :class:`IllConditionedError` (the cure is
  the same in every case: more damping, or more iterations).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from workers.engine.errors import IllConditionedError, NonFiniteError

__all__ = [
    "LISSA_DIVERGENCE_FACTOR",
    "POWER_ITERATIONS",
    "MatVec",
    "conjugate_gradient",
    "lissa",
    "top_eigenvalue",
]

MatVec = Callable[[torch.Tensor], torch.Tensor]
"""``v ↦ (H + δI) v`` for a flat float64 vector."""

POWER_ITERATIONS = 30
"""Power iterations for the top-eigenvalue estimate that sets LiSSA's default scale. The
estimate only has to exceed half the top eigenvalue for the series to converge (the iteration
matrix ``I − A/s`` then has spectral radius below 1 at the top end), so a rough one is enough."""

LISSA_DIVERGENCE_FACTOR = 10.0
"""LiSSA is declared divergent when ``‖h_j‖ > factor · (j + 1) · ‖v‖``: while every eigenvalue of
``I − A/s`` lies in [−1, 1] the partial sums obey ``‖h_j‖ ≤ (j + 1)‖v‖``, so exceeding that bound
by this factor means an eigenvalue outside, i.e. exponential growth."""


def _finite(tensor: torch.Tensor, stage: str, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(stage, what)
    return tensor


def conjugate_gradient(
    matvec: MatVec, rhs: torch.Tensor, tolerance: float, max_iterations: int, stage: str,
    preconditioner: MatVec | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given as a matvec.

    Stops when the recursive residual satisfies ``‖r‖ ≤ tolerance · ‖b‖``, starting from x = 0.
    With a ``preconditioner`` ``r ↦ M⁻¹ r`` (M symmetric positive definite, close to A) this is
    preconditioned CG: the same solution and stopping rule on the unpreconditioned residual, in
    fewer products when M captures A's large eigenvalues.

    Args:
        matvec: ``v ↦ A v``.
        rhs: the right-hand side b (flat).
        tolerance: relative residual to reach.
        max_iterations: most matvecs.
        stage: named in errors.
        preconditioner: ``r ↦ M⁻¹ r``, or None for plain CG.

    Returns:
        The solution and ``{"iterations", "cg_relative_residual"}``.

    Raises:
        NonFiniteError: a product or iterate holds NaN/Inf.
        IllConditionedError: ``pᵀAp ≤ 0`` (A is not positive definite), or no convergence.
    """
    solution = torch.zeros_like(rhs)
    rhs_norm = float(rhs.norm())
    if rhs_norm == 0.0:
        return solution, {"iterations": 0, "cg_relative_residual": 0.0}
    precondition = preconditioner or (lambda r: r)
    residual = rhs.clone()
    preconditioned = _finite(precondition(residual), stage, "the preconditioned residual in CG")
    direction = preconditioned.clone()
    residual_dot = float(residual @ preconditioned)
    relative = 1.0
    for iteration in range(1, max_iterations + 1):
        product = _finite(matvec(direction), stage, "a Hessian-vector product in CG")
        curvature = float(direction @ product)
        if curvature <= 0.0:
            raise IllConditionedError(
                f"stage '{stage}': conjugate gradient met negative curvature (pᵀ(H+δI)p / ‖p‖² = "
                f"{curvature / float(direction @ direction):.3e}): the damped Hessian is not positive "
                "definite at these parameters; raise influence.damping (or influence.l2_reg)"
            )
        alpha = residual_dot / curvature
        solution = solution + alpha * direction
        residual = residual - alpha * product
        relative = float(residual.norm()) / rhs_norm
        if not math.isfinite(relative):
            raise NonFiniteError(stage, "the CG residual")
        if relative <= tolerance:
            return solution, {"iterations": iteration, "cg_relative_residual": relative}
        preconditioned = _finite(precondition(residual), stage, "the preconditioned residual in CG")
        new_dot = float(residual @ preconditioned)
        direction = preconditioned + (new_dot / residual_dot) * direction
        residual_dot = new_dot
    raise IllConditionedError(
        f"stage '{stage}': conjugate gradient did not converge in {max_iterations} iterations "
        f"(relative residual {relative:.3e} > influence.cg_tolerance {tolerance:.1e}); raise "
        "influence.damping or influence.cg_max_iterations, or loosen influence.cg_tolerance"
    )


def top_eigenvalue(matvec: MatVec, size: int, like: torch.Tensor, seed: int, stage: str) -> float:
    """Largest-magnitude eigenvalue of a symmetric ``A`` by power iteration (Rayleigh quotient).

    Args:
        matvec: ``v ↦ A v``.
        size: dimension of A.
        like: a tensor whose dtype and device the iterate takes.
        seed: seeds the random start (on CPU, then moved), so the estimate is reproducible.
        stage: named in errors.

    Raises:
        NonFiniteError: a product holds NaN/Inf.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vector = torch.randn(size, generator=generator, dtype=torch.float64).to(like)
    vector = vector / vector.norm()
    estimate = 0.0
    for _ in range(POWER_ITERATIONS):
        product = _finite(matvec(vector), stage, "a Hessian-vector product in the power iteration")
        estimate = float(vector @ product)
        norm = float(product.norm())
        if norm == 0.0:
            return 0.0
        vector = product / norm
    return estimate


def lissa(
    sampled_matvec: Callable[[int, torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    scale: float,
    depth: int,
    stage: str,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """LiSSA: ``h_j = v + (I − A_j/s) h_{j−1}``, ``h_0 = v``; returns ``h_depth / s`` ≈ ``A⁻¹ v``.

    ``A_j`` is the j-th (possibly mini-batch, unbiased) estimate of ``A``; the series converges
    when every eigenvalue of ``A`` lies in (0, 2s), geometrically at rate ``1 − λ_min/s``.

    Args:
        sampled_matvec: ``(j, v) ↦ A_j v``.
        rhs: v (flat).
        scale: s, above half the top eigenvalue of A.
        depth: number of recursion steps.
        stage: named in errors.

    Returns:
        The estimate and ``{"iterations", "lissa_scale", "lissa_last_update"}`` (the relative size
        of the last step, a convergence indicator).

    Raises:
        NonFiniteError: NaN/Inf in the recursion.
        IllConditionedError: the series diverges (A not positive definite, or s too small).
    """
    rhs_norm = float(rhs.norm())
    estimate = rhs.clone()
    update = 0.0
    for step in range(1, depth + 1):
        following = rhs + estimate - sampled_matvec(step, estimate) / scale
        _finite(following, stage, "the LiSSA recursion")
        norm = float(following.norm())
        if norm > LISSA_DIVERGENCE_FACTOR * (step + 1) * rhs_norm:
            raise IllConditionedError(
                f"stage '{stage}': LiSSA diverged at step {step} (‖h‖/‖v‖ = {norm / rhs_norm:.3e}): "
                f"the damped Hessian is not positive definite or influence.lissa_scale ({scale:.3e}) "
                "is below half its top eigenvalue; raise influence.damping or influence.lissa_scale, "
                "or use influence.solver 'cg'"
            )
        update = float((following - estimate).norm()) / max(norm, 1e-300)
        estimate = following
    return estimate / scale, {"iterations": depth, "lissa_scale": scale, "lissa_last_update": update}
