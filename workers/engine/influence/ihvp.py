"""Iterative inverse-Hessian-vector products: conjugate gradient, LiSSA, power iteration.

Every solver sees the damped Hessian only through a product ``v ↦ (H + δI) v`` (a *matvec*),
works in the dtype of its input (float64 in the engine) and reports failure with a typed error
that names the stage and says what to change:

- non-finite products or iterates: :class:`NonFiniteError`;
- negative curvature, non-convergence or divergence: :class:`IllConditionedError` (the cure is
  the same in every case: more damping, or more iterations).

Several solves with one matrix (a job's influences and frontier directions: seven on the Adult
MLP) share CG's search directions through a :class:`KrylovBasis`: each solve starts from the
Galerkin projection of its right-hand side onto the directions earlier solves explored and keeps
its own directions A-orthogonal to them (deflated CG, Saad et al. 2000). The stopping rule is
unchanged; on the Adult MLP the seven solves took 81 instead of 102 products.
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
    "RECYCLE_DROP_TOLERANCE",
    "RECYCLE_EIGEN_FLOOR",
    "KrylovBasis",
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


RECYCLE_DROP_TOLERANCE = 1e-4
"""A direction whose A-norm² falls below this fraction of its own once the basis is projected out
of it adds (almost) nothing new and is not kept: CG repeats directions once it loses conjugacy."""
RECYCLE_EIGEN_FLOOR = 1e-10
"""Eigenvalues of the kept directions' Gram matrix below this fraction of the largest are
dropped from the basis: rounding error of ``AW`` grows as the inverse square root of the
smallest kept one, so this caps it near 1e-11."""


def _finite(tensor: torch.Tensor, stage: str, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(stage, what)
    return tensor


def _residual_dot(residual: torch.Tensor, preconditioned: torch.Tensor, relative: float, stage: str) -> float:
    """``rᵀM⁻¹r``, which CG divides by: positive unless the preconditioner (deflated) is not."""
    dot = float(residual @ preconditioned)
    if not dot > 0.0:
        raise IllConditionedError(
            f"stage '{stage}': conjugate gradient broke down (rᵀM⁻¹r = {dot:.3e} at relative residual "
            f"{relative:.3e}): the preconditioner is not positive definite here; set "
            "influence.cg_preconditioner_rows to 0 or raise influence.damping")
    return dot


class KrylovBasis:
    """Search directions ``D`` of CG solves with one matrix A and their exact products ``AD``, so
    later solves with A start where the earlier ones got (at most ``capacity`` directions:
    2 × capacity × size floats).

    The directions are kept as CG made them (scaled to unit A-norm), never orthogonalized in
    place: CG's directions lose conjugacy in floating point, and Gram-Schmidt on stored products
    compounds their rounding from one direction to the next (measured: 1e-14 to 1e-3 in 15
    directions). The A-orthonormal basis ``W = Tᵀ D`` comes instead from the eigenvalues of the
    small Gram matrix ``G = D A Dᵀ`` (``T = Q Λ^{-1/2}``, eigenvalues below
    :data:`RECYCLE_EIGEN_FLOOR` of the largest dropped), so ``AW = Tᵀ AD`` is always one product
    of exact ones. A direction that adds less than :data:`RECYCLE_DROP_TOLERANCE` of its A-norm²
    to the span is not kept. Only valid for the matrix its directions were multiplied by: the
    owner drops it when the parameters, weights or damping change.
    """

    def __init__(self, size: int, capacity: int, like: torch.Tensor) -> None:
        self.capacity = capacity
        self._directions = like.new_empty(capacity, size)
        self._products = like.new_empty(capacity, size)
        self._gram = like.new_zeros(capacity, capacity)
        self._transform = like.new_zeros(0, 0)
        self.count = 0

    @property
    def rank(self) -> int:
        """Dimension of the span the basis holds (at most :attr:`count`)."""
        return int(self._transform.shape[1])

    def _combine(self, coefficients: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``(T c)ᵀ rows``: the combination of the kept rows that basis coefficients c name."""
        return (self._transform @ coefficients) @ rows[:self.count]

    def start(self, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x₀, r₀)``: the A-orthogonal projection ``x₀ = W Wᵀ b`` of the solution onto the
        basis and its residual ``b − AW Wᵀ b``, with no product."""
        coefficients = self._transform.T @ (self._directions[:self.count] @ rhs)
        solution = self._combine(coefficients, self._directions)
        return solution, rhs - self._combine(coefficients, self._products)

    def deflate(self, vector: torch.Tensor) -> torch.Tensor:
        """``z − W (AW)ᵀ z``: z with its A-projection onto the basis taken out."""
        if not self.count:
            return vector
        coefficients = self._transform.T @ (self._products[:self.count] @ vector)
        return vector - self._combine(coefficients, self._directions)

    def extend(self, directions: list[torch.Tensor], products: list[torch.Tensor]) -> None:
        """Add a solve's search directions with their products; those that add nothing new,
        and those beyond the capacity, are dropped."""
        for direction, product in zip(directions, products, strict=True):
            if self.count == self.capacity:
                return
            norm = float(direction @ product)
            if not (math.isfinite(norm) and norm > 0.0):
                continue
            direction, product = direction / math.sqrt(norm), product / math.sqrt(norm)
            overlaps = self._products[:self.count] @ direction
            novelty = 1.0 - float((self._transform.T @ overlaps).square().sum()) if self.count else 1.0
            if novelty < RECYCLE_DROP_TOLERANCE:
                continue
            index = self.count
            self._directions[index], self._products[index] = direction, product
            self._gram[index, :index], self._gram[:index, index] = overlaps, overlaps
            self._gram[index, index] = 1.0
            self.count += 1
            self._factor()

    def _factor(self) -> None:
        """``T = Q Λ^{-1/2}`` over the Gram matrix's eigenvalues above the floor."""
        eigenvalues, eigenvectors = torch.linalg.eigh(self._gram[:self.count, :self.count])
        keep = eigenvalues > RECYCLE_EIGEN_FLOOR * float(eigenvalues.max())
        self._transform = eigenvectors[:, keep] / eigenvalues[keep].sqrt()


def conjugate_gradient(
    matvec: MatVec, rhs: torch.Tensor, tolerance: float, max_iterations: int, stage: str,
    preconditioner: MatVec | None = None, recycle: KrylovBasis | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given as a matvec.

    Stops when the recursive residual satisfies ``‖r‖ ≤ tolerance · ‖b‖``, starting from x = 0.
    With a ``preconditioner`` ``r ↦ M⁻¹ r`` (M symmetric positive definite, close to A) this is
    preconditioned CG: the same solution and stopping rule on the unpreconditioned residual, in
    fewer products when M captures A's large eigenvalues. With ``recycle`` (directions of earlier
    solves with this A) it is deflated CG: it starts from the projection onto them, searches only
    A-orthogonally to them, and adds its own directions to them when it converges.

    Args:
        matvec: ``v ↦ A v``.
        rhs: the right-hand side b (flat).
        tolerance: relative residual to reach.
        max_iterations: most matvecs.
        stage: named in errors.
        preconditioner: ``r ↦ M⁻¹ r``, or None for plain CG.
        recycle: directions of earlier solves with this A, extended by this one's; None for none.

    Returns:
        The solution and ``{"iterations", "cg_relative_residual"}`` (plus ``recycled``, the
        basis's size at the start, with ``recycle``).

    Raises:
        NonFiniteError: a product or iterate holds NaN/Inf.
        IllConditionedError: ``pᵀAp ≤ 0`` (A is not positive definite), or no convergence.
    """
    rhs_norm = float(rhs.norm())
    if rhs_norm == 0.0:
        return torch.zeros_like(rhs), {"iterations": 0, "cg_relative_residual": 0.0}
    basis = recycle if recycle is not None and recycle.count else None
    extra: dict[str, Any] = {} if recycle is None else {"recycled": recycle.count}
    solution, residual = (torch.zeros_like(rhs), rhs.clone()) if basis is None else basis.start(rhs)
    relative = float(residual.norm()) / rhs_norm
    if relative <= tolerance:
        return solution, {"iterations": 0, "cg_relative_residual": relative, **extra}
    precondition = preconditioner or (lambda r: r)
    deflate = basis.deflate if basis is not None else (lambda z: z)
    preconditioned = _finite(deflate(precondition(residual)), stage, "the preconditioned residual in CG")
    direction = preconditioned.clone()
    residual_dot = _residual_dot(residual, preconditioned, relative, stage)
    searched: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for iteration in range(1, max_iterations + 1):
        product = _finite(matvec(direction), stage, "a Hessian-vector product in CG")
        if recycle is not None and len(searched[0]) < recycle.capacity - recycle.count:
            searched[0].append(direction)
            searched[1].append(product)
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
            if recycle is not None:
                recycle.extend(*searched)
            return solution, {"iterations": iteration, "cg_relative_residual": relative, **extra}
        preconditioned = _finite(deflate(precondition(residual)), stage, "the preconditioned residual in CG")
        new_dot = _residual_dot(residual, preconditioned, relative, stage)
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
