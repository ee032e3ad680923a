"""The stored design Φ = [φ, 1]: blocks, products and the Gram matrix against dense float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.influence.head import HeadProblem, fit_head, head_pass
from workers.engine.models.design import Design, GramAccumulator


def _features(n: int = 500, d: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


def test_blocks_and_products_match_the_dense_matrix() -> None:
    design = Design(_features(), chunk_size=64)
    dense = torch.cat([design.features.double(), torch.ones(design.n, 1, dtype=torch.float64)], dim=1)
    assert torch.equal(design.dense(), dense)
    vector = torch.linspace(-1, 1, design.width, dtype=torch.float64)
    assert torch.allclose(design.matvec(vector), dense @ vector, atol=1e-12)
    rows = torch.linspace(0, 1, design.n, dtype=torch.float64)
    assert torch.allclose(design.rmatvec(rows), dense.T @ rows, atol=1e-10)
    assert design.nbytes == 500 * 7 * 4


@pytest.mark.parametrize("negative", [False, True])
def test_the_gram_accumulator_is_exact_for_any_sign(negative: bool) -> None:
    design = Design(_features(), chunk_size=64)
    scale = torch.rand(design.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if negative:
        scale[::7] *= -1
    gram = GramAccumulator(design.width, design.device)
    for rows in design.chunks():
        gram.add(design.block(rows), scale[rows])
    dense = design.dense()
    expected = dense.T @ (scale.unsqueeze(1) * dense)
    result = gram.result()
    assert torch.allclose(result, expected, atol=1e-10) and torch.equal(result, result.T)


def test_one_pass_gives_objective_gradient_and_hessian_and_is_counted() -> None:
    features = _features()
    labels = (features[:, 0] > 0).to(torch.float64)
    problem = HeadProblem(Design(features, chunk_size=64), labels, l2_reg=1.0)
    theta = torch.linspace(-0.3, 0.3, problem.width, dtype=torch.float64)
    weights = torch.ones(problem.n, dtype=torch.float64)
    result = head_pass(problem, theta, weights, objective=True, gradient=True, hessian=True)
    assert problem.passes == 1 and problem.grams == 1
    dense = problem.design.dense()
    p = torch.sigmoid(dense @ theta)
    grad = dense.T @ (p - labels) + problem.l2_reg * problem.reg_mask * theta
    assert result.gradient is not None and torch.allclose(result.gradient, grad, atol=1e-10)
    hessian = dense.T @ ((p * (1 - p)).unsqueeze(1) * dense) + torch.diag(problem.reg_mask)
    assert result.hessian is not None and torch.allclose(result.hessian, hessian, atol=1e-10)


def test_a_fit_reuses_its_hessian_while_it_converges_fast() -> None:
    features = _features(n=2000, d=5)
    noise = torch.randn(2000, generator=torch.Generator().manual_seed(2))
    labels = (features[:, 0] + 0.5 * features[:, 1] + noise > 0).to(torch.float64)
    problem = HeadProblem(Design(features), labels, l2_reg=1.0)
    theta, report = fit_head(problem, torch.zeros(problem.width, dtype=torch.float64),
                             torch.ones(problem.n, dtype=torch.float64), 1e-10, 50, "polish")
    assert report.converged and report.hessians < report.steps
    assert report.hessians == problem.grams
    fresh = HeadProblem(Design(features), labels, l2_reg=1.0)
    exact, _ = fit_head(fresh, theta, torch.ones(problem.n, dtype=torch.float64), 1e-13, 50, "polish")
    assert torch.allclose(theta, exact, atol=1e-7)
