"""Influence machinery: exactness on a quadratic model, leave-one-out fidelity on real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from workers.engine.config import MethodConfig
from workers.engine.errors import IllConditionedError, NonFiniteError
from workers.engine.examples.common import ExampleInfo
from workers.engine.influence.head import (
    HESSIAN_REUSE_MAX_LOGIT_CHANGE,
    HeadProblem,
    factorize,
    fit_head,
    hessian,
    hessian_factor,
    influences,
    max_logit_change,
    tilt_at,
    weighted_gradient_sum,
)
from workers.engine.io.datasets import load_dataset, parse_schema
from workers.engine.models.design import DEFAULT_CHUNK, Design
from workers.engine.objectives.surrogates import GroupGap, MeanLogLoss
from workers.engine.unlearning.head_steps import apply_step, trial_thetas


def _with_bias(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.hstack([x, np.ones((x.shape[0], 1))]))


def _design(x: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> Design:
    return Design(torch.from_numpy(np.ascontiguousarray(x)), chunk_size)


def _ridge(n: int = 300, d: int = 6, seed: int = 0) -> HeadProblem:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    return HeadProblem(_design(x), torch.from_numpy(y), l2_reg=2.0, loss="squared")


def _fit(problem: HeadProblem, weights: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    theta0 = torch.zeros(problem.width, dtype=torch.float64) if start is None else start
    theta, report = fit_head(problem, theta0, weights, tolerance=1e-12, max_steps=100, stage="test")
    assert report.converged
    return theta


def _newton_step(problem: HeadProblem, theta: torch.Tensor, eps: np.ndarray) -> torch.Tensor:
    ones = torch.ones(problem.n, dtype=torch.float64)
    factor = factorize(hessian(problem, theta, ones), "test")
    method = MethodConfig(name="newton", hessian="reweighted")
    return apply_step(problem, theta, ones, eps, factor, method).theta


def test_newton_removal_step_equals_exact_ridge_retraining() -> None:
    problem = _ridge()
    theta = _fit(problem, torch.ones(problem.n, dtype=torch.float64))
    eps = np.zeros(problem.n)
    eps[[3, 17, 42, 99]] = -1.0
    retrained = _fit(problem, torch.from_numpy(1.0 + eps))
    assert torch.allclose(_newton_step(problem, theta, eps), retrained, rtol=0, atol=1e-8)


def test_soft_weights_newton_step_is_exact_for_ridge() -> None:
    problem = _ridge(seed=1)
    theta = _fit(problem, torch.ones(problem.n, dtype=torch.float64))
    eps = np.random.default_rng(2).uniform(-0.9, 0.9, problem.n)
    retrained = _fit(problem, torch.from_numpy(1.0 + eps))
    assert torch.allclose(_newton_step(problem, theta, eps), retrained, rtol=0, atol=1e-8)


def test_original_hessian_step_matches_the_paper_formula() -> None:
    problem = _ridge(seed=3)
    ones = torch.ones(problem.n, dtype=torch.float64)
    theta = _fit(problem, ones)
    eps = np.zeros(problem.n)
    eps[:10] = -1.0
    factor = factorize(hessian(problem, theta, ones), "test")
    paper = theta - factor.solve(weighted_gradient_sum(problem, theta, torch.from_numpy(eps)), "test")
    step = apply_step(problem, theta, ones, eps, factor, MethodConfig(name="newton")).theta
    assert torch.allclose(step, paper, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def adult_lr(adult_example: ExampleInfo) -> tuple[HeadProblem, torch.Tensor, GroupGap, MeanLogLoss]:
    """L2 logistic regression on a 2,000-row Adult sample, fitted to its optimum."""
    schema = parse_schema({"label": "income", "sensitive": ["sex"]})
    train = load_dataset(adult_example.out_dir / "train.parquet", schema, "train")
    audit = load_dataset(adult_example.out_dir / "audit.parquet", schema, "audit")
    rows = np.random.default_rng(0).choice(train.n, size=2000, replace=False)
    problem = HeadProblem(_design(train.features[rows]), torch.from_numpy(train.labels[rows]),
                          l2_reg=1.0)
    theta = _fit(problem, torch.ones(problem.n, dtype=torch.float64))
    audit_design = _with_bias(audit.features)
    dp = GroupGap.build("demographic_parity", audit_design, audit.labels, audit.sensitive["sex"],
                        None, "audit")
    utility = MeanLogLoss(audit_design, torch.from_numpy(audit.labels))
    return problem, theta, dp, utility


def _loo_spearman(problem: HeadProblem, theta: torch.Tensor, objective: GroupGap | MeanLogLoss,
                  samples: np.ndarray) -> float:
    """Spearman agreement of predicted influence and actual leave-one-out refits at ``theta``."""
    ones = torch.ones(problem.n, dtype=torch.float64)
    factor = factorize(hessian(problem, theta, ones), "test")
    value, grad = objective.evaluate(theta)
    predicted = influences(problem, theta, factor.solve(grad, "test")).numpy()[samples]
    actual = []
    for i in samples:
        weights = ones.clone()
        weights[i] = 0.0
        actual.append(objective.evaluate(_fit(problem, weights, start=theta))[0] - value)
    return float(spearmanr(predicted, np.array(actual)).statistic)


def _unconverged(problem: HeadProblem, optimum: torch.Tensor, seed: int) -> torch.Tensor:
    """A head far from the optimum of the objective, as a user's differently trained head is."""
    noise = torch.from_numpy(np.random.default_rng(seed).normal(size=optimum.shape[0]))
    return optimum + 0.5 * noise * optimum.abs().mean()


@pytest.mark.slow
def test_tilted_influence_about_an_unpolished_head_matches_leave_one_out_on_adult(
        adult_lr: tuple[HeadProblem, torch.Tensor, GroupGap, MeanLogLoss]) -> None:
    """Influence at the user's parameters (tilted objective, no polish) predicts the refits of
    the tilted objective as well as influence at the optimum predicts ordinary refits."""
    problem, optimum, dp, utility = adult_lr
    theta = _unconverged(problem, optimum, seed=5)
    tilted = HeadProblem(problem.design, problem.labels, problem.l2_reg)
    ones = torch.ones(problem.n, dtype=torch.float64)
    tilt_at(tilted, theta, ones)
    assert float(torch.linalg.norm(torch.as_tensor(tilted.tilt))) > 1.0  # really not an optimum
    samples = np.random.default_rng(1).choice(problem.n, size=60, replace=False)
    for objective in (dp, utility):
        rho = _loo_spearman(tilted, theta, objective, samples)
        assert rho >= 0.95, f"{objective.name}: Spearman {rho:.4f}"


def test_tilted_influence_matches_leave_one_out_on_small_data() -> None:
    """German-credit sized (300 rows, 12 features, small groups): the same agreement."""
    rng = np.random.default_rng(11)
    n, d = 300, 12
    x = rng.normal(size=(n, d))
    groups = (rng.random(n) < 0.2).astype(np.int64)
    x[:, 0] += 0.8 * groups
    y = (x @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    problem = HeadProblem(_design(x), torch.from_numpy(y), l2_reg=1.0)
    optimum = _fit(problem, torch.ones(n, dtype=torch.float64))
    theta = _unconverged(problem, optimum, seed=3)
    tilt_at(problem, theta, torch.ones(n, dtype=torch.float64))
    audit_x = rng.normal(size=(200, d))
    audit_groups = (rng.random(200) < 0.2).astype(np.int64)
    audit_x[:, 0] += 0.8 * audit_groups
    audit_y = (audit_x @ rng.normal(size=d) > 0).astype(np.float64)
    design = _with_bias(audit_x)
    dp = GroupGap.build("demographic_parity", design, audit_y, audit_groups.astype(str), None, "audit")
    utility = MeanLogLoss(design, torch.from_numpy(audit_y))
    samples = np.arange(0, n, 2)
    for objective in (dp, utility):
        rho = _loo_spearman(problem, theta, objective, samples)
        assert rho >= 0.95, f"{objective.name}: Spearman {rho:.4f}"


def test_tilt_makes_the_given_head_the_optimum() -> None:
    problem = _ridge(seed=4)
    ones = torch.ones(problem.n, dtype=torch.float64)
    theta = torch.linspace(-1, 1, problem.width, dtype=torch.float64)
    tilt_at(problem, theta, ones)
    refit = _fit(problem, ones, start=torch.zeros_like(theta))
    assert torch.allclose(refit, theta, atol=1e-8)


@pytest.mark.slow
def test_leave_one_out_fidelity_on_adult(adult_lr: tuple[HeadProblem, torch.Tensor, GroupGap,
                                                          MeanLogLoss]) -> None:
    problem, theta, dp, utility = adult_lr
    samples = np.random.default_rng(1).choice(problem.n, size=200, replace=False)
    for objective in (dp, utility):
        rho = _loo_spearman(problem, theta, objective, samples)
        assert rho >= 0.95, f"{objective.name}: Spearman {rho:.4f}"


def test_factorize_refuses_indefinite_and_non_finite() -> None:
    with pytest.raises(IllConditionedError, match="not positive definite"):
        factorize(torch.tensor([[1.0, 0.0], [0.0, -1e-3]], dtype=torch.float64), "influence")
    with pytest.raises(IllConditionedError, match="ill-conditioned"):
        factorize(torch.diag(torch.tensor([1.0, 1e-15], dtype=torch.float64)), "influence")
    with pytest.raises(NonFiniteError, match="stage 'influence'"):
        factorize(torch.tensor([[float("nan")]], dtype=torch.float64), "influence")


def test_hessian_is_accumulated_in_chunks_exactly() -> None:
    problem = _ridge(n=1000)
    problem.loss = "logistic"
    problem.labels = (problem.labels > 0).to(torch.float64)
    theta = torch.linspace(-0.5, 0.5, problem.width, dtype=torch.float64)
    weights = torch.ones(problem.n, dtype=torch.float64)
    chunked = HeadProblem(Design(problem.design.features, chunk_size=64), problem.labels, problem.l2_reg)
    full = problem.design.dense()
    p = torch.sigmoid(full @ theta)
    dense = full.T @ ((p * (1 - p)).unsqueeze(1) * full)
    dense += torch.diag(problem.l2_reg * chunked.reg_mask)
    assert torch.allclose(hessian(chunked, theta, weights), dense, atol=1e-10)


def _logistic(n: int = 700, d: int = 5, seed: int = 3, chunk_size: int = 64,
              ) -> tuple[HeadProblem, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=d) + rng.logistic(size=n) > 0).astype(np.float64)
    problem = HeadProblem(_design(x, chunk_size), torch.from_numpy(y), l2_reg=1.0)
    return problem, _fit(problem, torch.ones(n, dtype=torch.float64))


def test_one_pass_serves_every_trial_step_and_every_influence() -> None:
    """The frontier's batched Newton steps and the paired influences equal their one-at-a-time
    forms, in fewer passes (chunks of 64 rows, so a pass is many chunks)."""
    problem, theta = _logistic()
    weights = torch.ones(problem.n, dtype=torch.float64)
    rng = np.random.default_rng(8)
    deltas = [rng.normal(scale=0.2, size=problem.n) for _ in range(5)]
    factor = factorize(hessian(problem, theta, weights), "test")
    method = MethodConfig(name="newton")
    passes = problem.passes
    batched = trial_thetas(problem, theta, weights, deltas, factor, method)
    assert problem.passes == passes + 1
    for delta, trial in zip(deltas, batched, strict=True):
        single = apply_step(problem, theta, weights, delta, factor, method).theta
        torch.testing.assert_close(trial, single, rtol=1e-12, atol=1e-14)
    directions = torch.from_numpy(rng.normal(size=(problem.width, 2)))
    both = influences(problem, theta, directions)
    assert both.shape == (problem.n, 2)
    for column in range(2):
        torch.testing.assert_close(both[:, column], influences(problem, theta, directions[:, column]),
                                   rtol=1e-12, atol=1e-14)


def _logistic_problem(n: int = 400, d: int = 5, seed: int = 2) -> HeadProblem:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ rng.normal(size=d)))).astype(np.float64)
    return HeadProblem(_design(x), torch.from_numpy(y), l2_reg=1.0)


@pytest.mark.parametrize(("shift", "reused"), [(1e-7, True), (1e-3, False)])
def test_a_factor_serves_parameters_that_barely_move_the_logits(shift: float, reused: bool) -> None:
    problem = _logistic_problem()
    ones = torch.ones(problem.n, dtype=torch.float64)
    theta = _fit(problem, ones)
    first = hessian_factor(problem, theta, ones, "test")
    direction = torch.linspace(-1.0, 1.0, problem.width, dtype=torch.float64)
    moved = theta + shift * direction / max_logit_change(problem, direction, torch.zeros_like(direction))
    assert max_logit_change(problem, moved, theta) == pytest.approx(shift)
    again = hessian_factor(problem, moved, ones, "test", HESSIAN_REUSE_MAX_LOGIT_CHANGE)
    assert (again is first) == reused
    # Within the bound, the old factor's solve is the new Hessian's to e^Δ − 1 in its norm.
    fresh = factorize(hessian(problem, moved, ones), "test")
    rhs = torch.linspace(0.5, 2.0, problem.width, dtype=torch.float64)
    error = first.solve(rhs, "test") - fresh.solve(rhs, "test")
    matrix = hessian(problem, moved, ones)
    relative = float(torch.sqrt(error @ matrix @ error) / torch.sqrt(fresh.solve(rhs, "test") @ rhs))
    assert relative <= (math.exp(shift) - 1.0) * 1.01


def test_a_factor_is_never_reused_for_other_weights() -> None:
    problem = _logistic_problem()
    ones = torch.ones(problem.n, dtype=torch.float64)
    theta = _fit(problem, ones)
    first = hessian_factor(problem, theta, ones, "test")
    other = ones.clone()
    other[0] = 0.0
    assert hessian_factor(problem, theta, other, "test", HESSIAN_REUSE_MAX_LOGIT_CHANGE) is not first
