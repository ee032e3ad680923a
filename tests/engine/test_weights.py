"""Weight schemes: constraints of the closed forms, the exact box QP, infeasibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from workers.engine.config import WeightingConfig
from workers.engine.errors import InfeasibleError
from workers.engine.weights import max_target_reduction, solve_qp, solve_weights


def _influences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return a, rng.normal(size=n) - 0.4 * a


@pytest.mark.parametrize("seed", range(5))
def test_soft_21_meets_the_target_exactly(seed: int) -> None:
    a, b = _influences(500, seed)
    result = solve_weights(a, b, 0.7, WeightingConfig(scheme="soft-2.1"))
    assert abs(a @ result.eps - 0.7) <= 1e-9
    assert result.predicted_target_change == pytest.approx(-0.7, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_soft_23_meets_target_with_zero_utility_change(seed: int) -> None:
    a, b = _influences(500, seed)
    result = solve_weights(a, b, 0.7, WeightingConfig(scheme="soft-2.3"))
    assert abs(a @ result.eps - 0.7) <= 1e-9
    assert abs(b @ result.eps) <= 1e-9
    # Minimum norm: any other ε with the same constraints is longer.
    other = result.eps + 0.01 * np.random.default_rng(seed + 1000).normal(size=500)
    a_hat, b_hat = a / np.linalg.norm(a), b / np.linalg.norm(b)
    basis, _ = np.linalg.qr(np.column_stack([a_hat, b_hat]))
    other -= basis @ (basis.T @ (other - result.eps))
    assert np.linalg.norm(other) >= np.linalg.norm(result.eps)


def _scipy_qp(a: np.ndarray, b: np.ndarray, reduction: float, tau: float, lower: float,
              upper: float) -> float:
    constraints = [{"type": "ineq", "fun": lambda e: a @ e - reduction, "jac": lambda e: a},
                   {"type": "ineq", "fun": lambda e: b @ e + tau, "jac": lambda e: b}]
    result = minimize(lambda e: 0.5 * e @ e, np.zeros(a.shape[0]), jac=lambda e: e,
                      constraints=constraints, bounds=[(lower, upper)] * a.shape[0], method="SLSQP",
                      options={"ftol": 1e-15, "maxiter": 2000})
    return float(result.fun)


@pytest.mark.parametrize("seed", range(20))
def test_qp_matches_a_general_solver(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    a, b = _influences(60, seed)
    lower, upper = -rng.uniform(0.3, 1.0), rng.uniform(0.2, 2.0)
    tau = float(rng.choice([0.0, 0.2]))
    reduction = max_target_reduction(a, b, lower, upper, tau) * rng.uniform(0.2, 0.95)
    eps = solve_qp(a, b, reduction, tau, lower, upper)
    assert a @ eps >= reduction - 1e-9 and b @ eps >= -tau - 1e-9
    assert eps.min() >= lower - 1e-12 and eps.max() <= upper + 1e-12
    ours, reference = 0.5 * eps @ eps, _scipy_qp(a, b, reduction, tau, lower, upper)
    assert abs(ours - reference) <= 1e-6 * abs(reference)


def test_qp_reports_infeasible_requests() -> None:
    a, b = _influences(50, 7)
    config = WeightingConfig(scheme="qp", lower=-0.1, upper=0.1)
    best = max_target_reduction(a, b, -0.1, 0.1, 0.0)
    with pytest.raises(InfeasibleError, match="infeasible") as caught:
        solve_weights(a, b, 2 * best, config)
    assert caught.value.max_reduction == pytest.approx(best)
    lenient = WeightingConfig(scheme="qp", lower=-0.1, upper=0.1, on_infeasible="best_effort")
    result = solve_weights(a, b, 2 * best, lenient)
    assert not result.feasible and result.max_reduction == pytest.approx(best)
    assert -result.predicted_target_change == pytest.approx(best, rel=1e-5)


def test_qp_respects_bounds_relative_to_applied_weights() -> None:
    a, b = _influences(200, 3)
    base = np.full(200, -0.5)
    config = WeightingConfig(scheme="qp", lower=-1.0, upper=0.5)
    result = solve_weights(a, b, 0.5, config, base=base)
    total = base + result.eps
    assert total.min() >= -1 - 1e-12 and total.max() <= 0.5 + 1e-12


def test_hard_removes_the_most_target_harmful_fraction() -> None:
    a, b = _influences(1000, 4)
    result = solve_weights(a, b, 1.0, WeightingConfig(scheme="hard", k_fraction=0.1))
    removed = np.flatnonzero(result.eps == -1)
    assert removed.size == 100
    assert set(removed) == set(np.argsort(a)[:100])
    assert result.predicted_target_change == pytest.approx(a[removed].sum())
