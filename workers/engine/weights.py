"""Per-sample weight schemes (METHOD.md §5, with the fixes of §9.1-§9.4).

Inputs are the oriented target influences ``a`` (``aᵢ`` = predicted change of |gap| when sample i
is removed) and the utility influences ``b``. For weights ε (effective weight 1 + ε) the
first-order predictions are ``Δtarget = −aᵀε`` and ``Δutility = −bᵀε``. A request is a reduction
``R > 0`` of the target, in the target's own units.

* ``hard``: ε = −1 on the ⌊k·n⌋ samples with the most negative ``a`` (only those with aᵢ < 0).
* ``soft-2.1``: min-norm ε with aᵀε = R:  ε = R a/‖a‖².
* ``soft-2.3``: min-norm ε with aᵀε = R and bᵀε = 0:  ε = R a⊥/‖a⊥‖², a⊥ = a − (aᵀb/‖b‖²) b.
* ``qp``: min ½‖ε‖² s.t. aᵀε ≥ R, bᵀε ≥ −τ, lower ≤ ε ≤ upper, solved exactly through its
  two-variable dual: ε(μ) = clip(μ₁a + μ₂b, lower, upper), with μ found by an active-set Newton
  iteration whose final step solves the 2×2 system of the optimal active set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.engine.config import WeightingConfig
from workers.engine.errors import InfeasibleError, NumericalError

__all__ = ["WeightResult", "max_target_reduction", "solve_qp", "solve_weights"]

FEASIBILITY_RTOL = 1e-9


@dataclass
class WeightResult:
    """Weights and what they are predicted to do."""

    eps: np.ndarray
    scheme: str
    requested_reduction: float
    predicted_target_change: float
    predicted_utility_change: float
    feasible: bool = True
    max_reduction: float | None = None
    notes: list[str] = field(default_factory=list)

    def scaled(self, factor: float) -> WeightResult:
        """The same weights times ``factor`` (a shortened step), predictions scaled with them."""
        notes = [*self.notes, f"step scaled by {factor:g}"] if factor != 1.0 else list(self.notes)
        return WeightResult(eps=self.eps * factor, scheme=self.scheme,
                            requested_reduction=self.requested_reduction * factor,
                            predicted_target_change=self.predicted_target_change * factor,
                            predicted_utility_change=self.predicted_utility_change * factor,
                            feasible=self.feasible, max_reduction=self.max_reduction, notes=notes)

    def summary(self, lower: float | None = None, upper: float | None = None) -> dict[str, Any]:
        """Statistics of the weights for the report (PRODUCT.md ``weights``)."""
        eps = self.eps
        effective = 1.0 + eps
        out: dict[str, Any] = {
            "scheme": self.scheme,
            "n": int(eps.shape[0]),
            "min": float(eps.min()) if eps.size else 0.0,
            "max": float(eps.max()) if eps.size else 0.0,
            "l2_norm": float(np.linalg.norm(eps)),
            "effective_weight_min": float(effective.min()) if eps.size else 1.0,
            "effective_weight_max": float(effective.max()) if eps.size else 1.0,
            "down_weighted": int((eps < -1e-12).sum()),
            "up_weighted": int((eps > 1e-12).sum()),
            "removed": int((eps <= -1 + 1e-12).sum()),
            "negative_effective_weights": int((effective < -1e-12).sum()),
            "requested_reduction": self.requested_reduction,
            "predicted_target_change": self.predicted_target_change,
            "predicted_utility_change": self.predicted_utility_change,
            "feasible": self.feasible,
            "max_reduction": self.max_reduction,
            "notes": list(self.notes),
        }
        if lower is not None and upper is not None:
            out["at_lower_bound"] = int((eps <= lower + 1e-12).sum())
            out["at_upper_bound"] = int((eps >= upper - 1e-12).sum())
        return out


def _result(eps: np.ndarray, scheme: str, a: np.ndarray, b: np.ndarray, reduction: float,
            **extra: Any) -> WeightResult:
    return WeightResult(eps=eps, scheme=scheme, requested_reduction=reduction,
                        predicted_target_change=-float(a @ eps),
                        predicted_utility_change=-float(b @ eps), **extra)


def _hard(a: np.ndarray, b: np.ndarray, reduction: float, k_fraction: float) -> WeightResult:
    count = math.floor(k_fraction * a.shape[0])
    order = np.argsort(a, kind="stable")[:count]
    chosen = order[a[order] < 0]
    eps = np.zeros_like(a)
    eps[chosen] = -1.0
    notes = []
    if chosen.shape[0] < count:
        notes.append(f"only {chosen.shape[0]} of the {count} requested samples lower the target "
                     "when removed; the others were kept")
    return _result(eps, "hard", a, b, reduction, notes=notes)


def _soft_21(a: np.ndarray, b: np.ndarray, reduction: float) -> WeightResult:
    norm2 = float(a @ a)
    if norm2 == 0.0:
        raise NumericalError("all target influences are zero: no reweighting can move the target")
    return _result(reduction * a / norm2, "soft-2.1", a, b, reduction)


def _soft_23(a: np.ndarray, b: np.ndarray, reduction: float) -> WeightResult:
    b2 = float(b @ b)
    a_perp = a - (float(a @ b) / b2) * b if b2 > 0 else a
    norm2 = float(a_perp @ a_perp)
    if norm2 <= 1e-20 * max(float(a @ a), 1e-300):
        raise NumericalError(
            "target and utility influences are parallel: the target cannot move without changing "
            "utility; use weighting.scheme 'qp' with objective.utility_tolerance > 0"
        )
    return _result(reduction * a_perp / norm2, "soft-2.3", a, b, reduction)


def max_target_reduction(a: np.ndarray, b: np.ndarray, lower: np.ndarray | float,
                         upper: np.ndarray | float, tolerance: float) -> float:
    """Largest aᵀε over the box with bᵀε ≥ −τ (an LP), i.e. the largest predicted reduction."""
    # scipy.optimize takes ~0.5 s to import; most jobs never solve this LP.
    from scipy.optimize import linprog

    n = a.shape[0]
    lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,))
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,))
    result = linprog(-a, A_ub=-b.reshape(1, -1), b_ub=[tolerance],
                     bounds=np.column_stack([lo, hi]), method="highs")
    if result.status != 0:
        raise NumericalError(f"feasibility LP failed: {result.message}")
    return float(-result.fun)


def _clip(mu: np.ndarray, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    clipped: np.ndarray = np.clip(mu[0] * a + mu[1] * b, lo, hi)
    return clipped


def _dual_value(mu: np.ndarray, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                reduction: float, tolerance: float) -> float:
    eps = _clip(mu, a, b, lo, hi)
    return float(0.5 * eps @ eps - mu[0] * (a @ eps - reduction) - mu[1] * (b @ eps + tolerance))


def _active_set_solution(mu: np.ndarray, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                         reduction: float, tolerance: float, use_utility: bool) -> np.ndarray:
    """μ solving the constraints exactly with the clipping pattern at ``mu`` held fixed."""
    z = mu[0] * a + mu[1] * b
    free = (z > lo) & (z < hi)
    clipped = np.where(z <= lo, lo, np.where(z >= hi, hi, 0.0))
    rhs_a = reduction - float(a[~free] @ clipped[~free])
    if not use_utility:
        denom = float(a[free] @ a[free])
        return np.array([rhs_a / denom if denom > 0 else mu[0], 0.0])
    rhs_b = -tolerance - float(b[~free] @ clipped[~free])
    gram = np.array([[a[free] @ a[free], a[free] @ b[free]], [a[free] @ b[free], b[free] @ b[free]]])
    solution, *_ = np.linalg.lstsq(gram, np.array([rhs_a, rhs_b]), rcond=1e-14)
    return np.asarray(solution, dtype=np.float64)


def _dual_ascent(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, reduction: float,
                 tolerance: float, use_utility: bool) -> np.ndarray:
    """Maximize the concave dual over μ ≥ 0 by safeguarded active-set Newton steps."""
    mu = np.array([reduction / max(float(a @ a), 1e-300), 0.0])
    value = _dual_value(mu, a, b, lo, hi, reduction, tolerance)
    for _ in range(200):
        target = _active_set_solution(mu, a, b, lo, hi, reduction, tolerance, use_utility)
        target = np.maximum(target, 0.0)
        step, moved = 1.0, False
        while step > 1e-12:
            candidate = mu + step * (target - mu)
            candidate_value = _dual_value(candidate, a, b, lo, hi, reduction, tolerance)
            if candidate_value >= value - 1e-15 * max(1.0, abs(value)):
                moved = not np.allclose(candidate, mu, rtol=1e-15, atol=0.0)
                mu, value = candidate, candidate_value
                break
            step *= 0.5
        if not moved:
            break
    return mu


def solve_qp(a: np.ndarray, b: np.ndarray, reduction: float, tolerance: float,
             lower: np.ndarray | float, upper: np.ndarray | float) -> np.ndarray:
    """Exact min-norm ε in the box with aᵀε ≥ R and bᵀε ≥ −τ (assumed feasible)."""
    n = a.shape[0]
    lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy()
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy()
    mu = _dual_ascent(a, b, lo, hi, reduction, tolerance, use_utility=False)
    eps = _clip(mu, a, b, lo, hi)
    if float(b @ eps) >= -tolerance - 1e-12 * max(1.0, float(np.abs(b).sum())):
        return eps
    mu = _dual_ascent(a, b, lo, hi, reduction, tolerance, use_utility=True)
    return _clip(mu, a, b, lo, hi)


def _qp(a: np.ndarray, b: np.ndarray, reduction: float, tolerance: float, config: WeightingConfig,
        base: np.ndarray) -> WeightResult:
    lower, upper = config.lower - base, config.upper - base
    best = max_target_reduction(a, b, lower, upper, tolerance)
    notes: list[str] = []
    feasible = best >= reduction * (1 - FEASIBILITY_RTOL)
    if not feasible:
        message = (f"requested target reduction {reduction:.6g} is infeasible with weights in "
                   f"[{config.lower}, {config.upper}] and utility tolerance {tolerance:.6g}: at most "
                   f"{best:.6g} is reachable; lower objective.reduction, widen weighting.lower/upper "
                   "or raise objective.utility_tolerance")
        if config.on_infeasible == "error" or best <= 0:
            raise InfeasibleError(message, max_reduction=best)
        notes.append(message + " (best effort: aiming at the maximum)")
        reduction = best * (1 - 1e-6)
    eps = solve_qp(a, b, reduction, tolerance, lower, upper)
    return _result(eps, "qp", a, b, reduction, feasible=feasible, max_reduction=best, notes=notes)


def solve_weights(a: np.ndarray, b: np.ndarray, reduction: float, config: WeightingConfig,
                  utility_tolerance: float = 0.0, base: np.ndarray | None = None) -> WeightResult:
    """Weights ε for one correction step.

    Args:
        a: oriented target influences (removal of i changes |target| by aᵢ).
        b: utility influences (removal of i changes the mean audit log-loss by bᵢ).
        reduction: requested decrease R > 0 of the target, in its units.
        config: scheme and its parameters.
        utility_tolerance: τ, allowed first-order increase of the utility loss (``qp`` only).
        base: weights already applied (target tracking); the box applies to ``base + ε``.

    Raises:
        InfeasibleError: ``qp`` cannot reach R and ``on_infeasible`` is ``error``.
        NumericalError: the influences cannot define the scheme's weights.
    """
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise NumericalError("influences contain NaN/Inf at stage 'weights'")
    if config.scheme == "hard":
        return _hard(a, b, reduction, config.k_fraction)
    if config.scheme == "soft-2.1":
        return _soft_21(a, b, reduction)
    if config.scheme == "soft-2.3":
        return _soft_23(a, b, reduction)
    return _qp(a, b, reduction, utility_tolerance, config,
               np.zeros_like(a) if base is None else base)
