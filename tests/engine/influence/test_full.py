"""Full-network influence (scope 'full'): autograd exactness, solver agreement, LOO fidelity, errors.

Two models share the weights of one ``train_mlp`` run on a synthetic nonlinear task:

- ``relu``: the product's architecture, as trained. Its objective is piecewise smooth: the
  minimizer of Σℓᵢ + (λ/2)‖θ‖² generically lies on activation kinks (a sample's pre-activation
  exactly 0), where the gradient jumps by one sample's gradient, so Newton cannot drive ‖∇L‖ to
  zero and the Hessian is often indefinite. Used for the exactness checks (which hold at any θ)
  and for the failure modes.
- ``smooth``: the same weights with ReLU replaced by Softplus, polished to a true stationary point
  (‖∇L‖ ≤ 1e-12·n). Influence assumptions hold there, so it carries solver agreement and LOO.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.nn import functional as F

from workers.engine.config import InfluenceConfig
from workers.engine.errors import IllConditionedError, InputError, NonFiniteError
from workers.engine.influence.full import (
    DEFAULT_DAMPING_PER_WEIGHT,
    FullInfluence,
    SolverChoice,
    check_memory,
    choose_solver,
    estimate_memory_bytes,
    flat_to_state,
    objective_gradient,
    profile_network,
    resolve_solver,
)
from workers.engine.influence.full_scope import span_basis
from workers.engine.io.architecture import ArchSpec
from workers.engine.models.training import build_model, train_mlp

N, N_AUDIT, LAMBDA = 400, 200, 1.0
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 5))
    logit = 1.5 * x[:, 0] - x[:, 1] * x[:, 2] + np.maximum(x[:, 3], 0) - 0.5
    return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)


@pytest.fixture(scope="module")
def data() -> Data:
    rng = np.random.default_rng(0)
    (x, y), (xa, ya) = _sample(rng, N), _sample(rng, N_AUDIT)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xa), torch.from_numpy(ya)


@pytest.fixture(scope="module")
def relu(data: Data) -> nn.Sequential:
    x, y = data[0].numpy().astype(np.float32), data[1].numpy()
    return train_mlp(ArchSpec(5, (8,)), x, y, seed=0, epochs=40, batch_size=N, lr=5e-2, weight_decay=0.0)


def _ones() -> torch.Tensor:
    return torch.ones(N, dtype=torch.float64)


def _config(**overrides: object) -> InfluenceConfig:
    settings: dict[str, object] = {"scope": "full", "l2_reg": LAMBDA, "damping": 1e-9, "solver": "exact"}
    settings.update(overrides)
    settings.setdefault("curvature", "hessian")
    return InfluenceConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def smooth(relu: nn.Sequential, data: Data) -> nn.Module:
    network = copy.deepcopy(relu)
    network[1] = nn.Softplus()
    engine = FullInfluence(network, data[0], data[1], _ones(), _config())
    report = engine.polish(tolerance=1e-12, max_steps=60)
    assert report["converged"], report
    return engine.to_network()


def _audit_loss(data: Data) -> Callable[[nn.Module], torch.Tensor]:
    return lambda model: F.binary_cross_entropy_with_logits(model(data[2]).reshape(-1), data[3])


def _naive_gradients(network: nn.Module, data: Data) -> torch.Tensor:
    model = copy.deepcopy(network).double()
    rows = []
    for i in range(N):
        logit = model(data[0][i:i + 1]).reshape(())
        loss = F.binary_cross_entropy_with_logits(logit, data[1][i])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows)


def test_per_sample_products_and_gradient_sums_match_a_naive_autograd_loop(
        relu: nn.Sequential, data: Data) -> None:
    engine = FullInfluence(relu, data[0], data[1], _ones(), _config(chunk_size=64))
    naive = _naive_gradients(relu, data)
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(engine.parameter_count, 3, generator=generator, dtype=torch.float64)
    assert torch.allclose(engine.per_sample_dot(vectors), naive @ vectors, rtol=1e-10, atol=1e-12)
    assert torch.allclose(engine.per_sample_dot(vectors[:, 0]), naive @ vectors[:, 0], rtol=1e-10, atol=1e-12)
    eps = torch.randn(N, generator=generator, dtype=torch.float64)
    assert torch.allclose(engine.weighted_gradient_sum(eps), naive.T @ eps, rtol=1e-10, atol=1e-10)
    block = torch.randn(N, 4, generator=generator, dtype=torch.float64)
    assert torch.allclose(engine.weighted_gradient_sums(block), naive.T @ block, rtol=1e-10, atol=1e-10)
    expected = naive.sum(0) + LAMBDA * engine.flat_parameters()
    assert torch.allclose(engine.gradient(), expected, rtol=1e-10, atol=1e-10)


def test_hvp_and_dense_hessian_match_autograd_hessian(relu: nn.Sequential, data: Data) -> None:
    weights = torch.rand(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    engine = FullInfluence(relu, data[0], data[1], weights, _config(chunk_size=64, damping=0.5))
    template = engine.to_network()

    def objective(flat: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(template, flat_to_state(template, flat), (data[0],))
        losses = F.binary_cross_entropy_with_logits(logits.reshape(-1), data[1], reduction="none")
        return weights @ losses + 0.5 * LAMBDA * flat @ flat

    reference = torch.autograd.functional.hessian(objective, engine.flat_parameters())  # type: ignore[no-untyped-call]
    damped = reference + 0.5 * torch.eye(engine.parameter_count, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    vector = torch.randn(engine.parameter_count, generator=generator, dtype=torch.float64)
    assert torch.allclose(engine.hvp(vector), damped @ vector, rtol=1e-10, atol=1e-10)
    assert torch.allclose(engine.dense_hessian(), damped, rtol=1e-10, atol=1e-10)


def _influences(network: nn.Module, data: Data, **overrides: object,
                ) -> tuple[torch.Tensor, dict[str, object]]:
    engine = FullInfluence(network, data[0], data[1], _ones(), _config(**overrides))
    target = objective_gradient(engine.to_network(), _audit_loss(data))
    direction, info = engine.solve(target, "test")
    return engine.per_sample_dot(direction), info


def _relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


def test_cg_matches_exact_at_tight_tolerance_with_default_damping(smooth: nn.Module, data: Data) -> None:
    exact, info = _influences(smooth, data, damping=0.0)
    assert info["damping"] == pytest.approx(DEFAULT_DAMPING_PER_WEIGHT * N)
    cg, cg_info = _influences(smooth, data, damping=0.0, solver="cg", cg_tolerance=1e-12)
    assert cg_info["solver"] == "cg" and float(cg_info["relative_residual"]) < 1e-10  # type: ignore[arg-type]
    assert _relative_error(cg, exact) <= 1e-4


def test_lissa_matches_exact(smooth: nn.Module, data: Data) -> None:
    # Damping 10 gives cond(H + δI) ≈ 60, so 800 full-batch steps shrink the slowest error
    # component by (1 − 1/(1.1·60))^800 ≈ 5e-6 (measured relative error 6e-8).
    exact, _ = _influences(smooth, data, damping=10.0)
    full, info = _influences(smooth, data, damping=10.0, solver="lissa", lissa_depth=800)
    assert info["iterations"] == 800 and _relative_error(full, exact) <= 1e-5
    # Mini-batches of half the data leave a noise floor (constant step, no averaging; measured
    # relative error 0.08, cosine 0.997): bounded loosely.
    sampled, _ = _influences(smooth, data, damping=10.0, solver="lissa", lissa_depth=800,
                             lissa_batch_size=200)
    assert _relative_error(sampled, exact) <= 0.25
    assert float(sampled @ exact / (sampled.norm() * exact.norm())) >= 0.98


def test_leave_one_out_fidelity(smooth: nn.Module, data: Data) -> None:
    influence, _ = _influences(smooth, data)
    audit = _audit_loss(data)
    base = float(audit(smooth))
    order = np.argsort(-influence.abs().numpy())
    chosen = sorted(set(order[:20].tolist()) | set(range(0, N, 20)))
    actual = []
    for i in chosen:
        weights = _ones()
        weights[i] = 0.0
        engine = FullInfluence(smooth, data[0], data[1], weights, _config())
        assert engine.polish(tolerance=1e-12, max_steps=30)["converged"]
        actual.append(float(audit(engine.to_network())) - base)
    rho = spearmanr(influence.numpy()[chosen], actual).statistic
    # A smooth 57-parameter MLP at a strict local minimum with λ = 1 is close to convex around θ̂,
    # and a single removal moves θ by O(1/n): the first-order prediction should rank the changes
    # almost perfectly (measured 0.998, Pearson 0.989); 0.9 leaves room for the higher-order terms.
    assert rho >= 0.9, rho


def test_cg_without_convergence_says_what_to_raise(smooth: nn.Module, data: Data) -> None:
    with pytest.raises(IllConditionedError, match=r"did not converge in 2 iterations.*cg_max_iterations"):
        _influences(smooth, data, solver="cg", cg_tolerance=1e-12, cg_max_iterations=2)


@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
def test_indefinite_hessian_is_refused(relu: nn.Sequential, data: Data, solver: str) -> None:
    # The trained ReLU network without weight decay is not at a minimum: H has eigenvalues < 0.
    engine = FullInfluence(relu, data[0], data[1], _ones(), _config(l2_reg=0.0, damping=1e-12, solver=solver))
    with pytest.raises(IllConditionedError, match=r"raise influence\.damping"):
        engine.solve(torch.linspace(-1.0, 1.0, engine.parameter_count, dtype=torch.float64), "test")


def test_lissa_with_too_small_scale_diverges_naming_the_stage(smooth: nn.Module, data: Data) -> None:
    with pytest.raises(IllConditionedError, match="stage 'test': LiSSA diverged"):
        _influences(smooth, data, solver="lissa", lissa_scale=1.0, lissa_depth=500)


def test_memory_cap_is_checked_before_any_work(
        relu: nn.Sequential, data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match=r"chunk_size.*solver 'cg'.*max_memory_gb"):
        check_memory(10**6, 20_000, _config(exact_max_parameters=50_000))
    assert estimate_memory_bytes(N, 57, _config(solver="cg")) < estimate_memory_bytes(N, 57, _config())

    def refuse(*_args: object) -> object:
        raise AssertionError("heavy work started before the memory check")

    monkeypatch.setattr(copy, "deepcopy", refuse)
    with pytest.raises(InputError, match="max_memory_gb"):
        FullInfluence(relu, data[0], data[1], _ones(), _config(max_memory_gb=1e-6))


def test_exact_solver_refuses_too_many_parameters(relu: nn.Sequential, data: Data) -> None:
    with pytest.raises(InputError, match=r"exact_max_parameters=50.*solver 'cg'"):
        FullInfluence(relu, data[0], data[1], _ones(), _config(exact_max_parameters=50))
    auto = FullInfluence(relu, data[0], data[1], _ones(), _config(solver="auto", exact_max_parameters=50))
    assert auto.solver == "cg" and "within influence.auto_cg_max_flops" in auto.solver_reason


def test_non_finite_inputs_name_the_stage(relu: nn.Sequential, data: Data) -> None:
    features = data[0].clone()
    features[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="stage 'load'"):
        FullInfluence(relu, features, data[1], _ones(), _config())
    engine = FullInfluence(relu, data[0], data[1], _ones(), _config())
    with pytest.raises(NonFiniteError, match="stage 'test'"):
        engine.solve(torch.full((engine.parameter_count,), float("inf"), dtype=torch.float64), "test")


def test_flat_round_trip_and_objective_gradient(relu: nn.Sequential, data: Data) -> None:
    engine = FullInfluence(relu, data[0], data[1], _ones(), _config())
    state = flat_to_state(relu, engine.flat_parameters())
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
        k: (v.shape, v.dtype) for k, v in relu.state_dict().items()}
    assert all(torch.equal(state[k], v) for k, v in relu.state_dict().items())
    # ∇ of the summed training log-loss equals the sum of the per-sample gradients.
    total = objective_gradient(engine.to_network(), lambda m: F.binary_cross_entropy_with_logits(
        m(data[0]).reshape(-1), data[1], reduction="sum"))
    assert torch.allclose(total, engine.weighted_gradient_sum(_ones()), rtol=1e-10, atol=1e-10)


def test_gauss_newton_products_match_the_dense_gauss_newton_matrix(relu: nn.Sequential, data: Data) -> None:
    weights = torch.rand(N, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    config = _config(chunk_size=64, damping=0.5, curvature="gauss_newton")
    engine = FullInfluence(relu, data[0], data[1], weights, config)
    template = engine.to_network()
    jacobian = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
        lambda flat: torch.func.functional_call(template, flat_to_state(template, flat),
                                                (data[0],)).reshape(-1),
        engine.flat_parameters())
    probability = torch.sigmoid(template(data[0]).reshape(-1)).detach()
    reference = jacobian.T @ ((weights * probability * (1 - probability)).unsqueeze(1) * jacobian)
    damped = reference + (LAMBDA + 0.5) * torch.eye(engine.parameter_count, dtype=torch.float64)
    vector = torch.randn(engine.parameter_count, generator=torch.Generator().manual_seed(5),
                         dtype=torch.float64)
    assert torch.allclose(engine.hvp(vector), damped @ vector, rtol=1e-10, atol=1e-10)
    assert torch.allclose(engine.dense_hessian(), damped, rtol=1e-10, atol=1e-10)
    assert float(torch.linalg.eigvalsh(engine.dense_hessian())[0]) >= LAMBDA + 0.5 - 1e-9


def test_a_span_basis_reproduces_its_columns_with_the_rank_of_their_span() -> None:
    rng = np.random.default_rng(0)
    direction, other = rng.normal(size=N), rng.normal(size=N)
    columns = np.column_stack([0.1 * direction, 0.7 * direction, -0.3 * direction, other])
    basis, coefficients = span_basis(columns)
    assert basis.shape == (N, 2) and coefficients.shape == (2, 4)
    np.testing.assert_allclose(basis @ coefficients, columns, rtol=0, atol=1e-12)
    assert span_basis(np.zeros((N, 3)))[0].shape == (N, 1)


def test_ekfac_scores_rank_like_the_exact_ones(smooth: nn.Module, data: Data) -> None:
    exact, _ = _influences(smooth, data, damping=0.0, curvature="gauss_newton")
    ekfac, info = _influences(smooth, data, damping=0.0, curvature="gauss_newton", solver="ekfac")
    assert info["solver"] == "ekfac" and info["relative_residual"] is None
    # Measured Spearman 0.761, cosine 0.861 on this 57-parameter MLP (EK-FAC is block-diagonal
    # per layer, so cross-layer curvature is lost); the margins leave room for other BLAS.
    assert spearmanr(exact.numpy(), ekfac.numpy()).statistic >= 0.65
    assert float(exact @ ekfac / (exact.norm() * ekfac.norm())) >= 0.75


def test_influence_products_never_form_per_sample_gradients(
        relu: nn.Sequential, data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FullInfluence(relu, data[0], data[1], _ones(), _config(chunk_size=64))
    reference = engine.per_sample_gradients(slice(0, N))

    def refuse(*_args: object) -> object:
        raise AssertionError("per-sample gradients were materialized")

    monkeypatch.setattr(engine, "per_sample_gradients", refuse)
    monkeypatch.setattr("workers.engine.influence.full.grad", refuse)
    vector = torch.linspace(-1.0, 1.0, engine.parameter_count, dtype=torch.float64)
    assert torch.allclose(engine.per_sample_dot(vector), reference @ vector, rtol=1e-10, atol=1e-12)
    eps = torch.linspace(-1.0, 1.0, N, dtype=torch.float64).unsqueeze(1)
    assert torch.allclose(engine.weighted_gradient_sums(eps), reference.T @ eps, rtol=1e-10, atol=1e-10)
    # Without per-sample gradients nothing scales as rows × P: 1 M parameters on 30 k rows fits
    # in well under the default cap with CG or EK-FAC (it was refused at 92 k parameters).
    for solver in ("cg", "ekfac"):
        config = _config(solver=solver, curvature="gauss_newton")
        check_memory(30_000, 1_000_000, config, width=2_000, factor_entries=4_000_000)
        assert estimate_memory_bytes(30_000, 1_000_000, config, width=2_000) < 2**31


ADULT_ROWS, ADULT_FEATURES = 30_162, 103
"""The Adult example's training rows and model features."""


def _auto(network: nn.Module, rows: int = ADULT_ROWS, row_shape: tuple[int, ...] = (ADULT_FEATURES,),
          **overrides: object) -> SolverChoice:
    """What ``solver: auto`` picks for ``network`` on ``rows`` rows (modules only: no data, no training)."""
    config = InfluenceConfig(**{"scope": "full", "solver": "auto", **overrides})  # type: ignore[arg-type]
    parameters = sum(p.numel() for p in network.parameters())
    return choose_solver(parameters, config, rows, profile_network(network, torch.zeros(1, *row_shape)))


@pytest.fixture(scope="module")
def million() -> nn.Sequential:
    """The benchmark's 1 M-parameter MLP on Adult's features ([960, 960])."""
    return build_model(ArchSpec(ADULT_FEATURES, (960, 960)))


def test_auto_picks_exact_for_a_small_network() -> None:
    network = build_model(ArchSpec(ADULT_FEATURES, (16,)))  # 1,681 parameters
    assert _auto(network).name == "exact"


def test_auto_keeps_cg_for_the_adult_example_mlp() -> None:
    network = build_model(ArchSpec(ADULT_FEATURES, (64, 32)))  # the example's own architecture
    assert sum(p.numel() for p in network.parameters()) == 8_769
    assert profile_network(network, torch.zeros(1, ADULT_FEATURES)).forward_flops_per_row == \
        2 * (103 * 64 + 64 * 32 + 32 * 1)
    choice = _auto(network)
    assert choice.name == "cg" and "within influence.auto_cg_max_flops" in choice.reason


def test_auto_picks_ekfac_where_cg_is_past_its_budget(million: nn.Sequential) -> None:
    assert sum(p.numel() for p in million.parameters()) == 1_023_361
    choice = _auto(million)
    assert choice.name == "ekfac" and "above influence.auto_cg_max_flops" in choice.reason
    assert _auto(million, auto_cg_max_flops=1e14).name == "cg"
    assert _auto(million, rows=1_000).name == "cg"  # the same network on little data is cheap for CG
    layers = list(million)
    normalized = nn.Sequential(*layers[:2], nn.LayerNorm(960), *layers[2:])  # on EK-FAC's diagonal
    assert _auto(normalized).name == "ekfac"


def test_auto_keeps_cg_when_ekfac_cannot_stand_in(million: nn.Sequential) -> None:
    hessian = _auto(million, curvature="hessian")
    assert hessian.name == "cg" and "Gauss-Newton" in hessian.reason
    layers = list(million)
    with_prelu = nn.Sequential(layers[0], nn.PReLU(), *layers[2:])  # a parameter EK-FAC does not factor
    uncovered = _auto(with_prelu)
    assert uncovered.name == "cg" and "does not cover" in uncovered.reason
    grouped = nn.Sequential(nn.Conv2d(4, 64, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                            nn.Linear(64 * 28 * 28, 1))
    assert _auto(grouped, rows=3_000, row_shape=(4, 28, 28)).name == "cg"


def test_a_convolution_costs_its_weights_at_every_output_position() -> None:
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(8 * 14 * 14, 1))
    profile = profile_network(network, torch.zeros(1, 3, 28, 28))
    assert profile.forward_flops_per_row == 2 * (8 * 3 * 3 * 3 * 28 * 28 + 8 * 14 * 14)
    assert profile.ekfac_covers


@pytest.mark.parametrize("solver", ["exact", "cg", "lissa", "ekfac"])
def test_an_explicit_solver_is_used_as_named(million: nn.Sequential, solver: str) -> None:
    assert _auto(million, solver=solver) == SolverChoice(solver, "named by influence.solver")


def test_without_a_profile_auto_stays_exact_or_cg() -> None:
    config = InfluenceConfig(scope="full", solver="auto")
    assert resolve_solver(1_000, config) == "exact"
    assert resolve_solver(1_023_361, config, ADULT_ROWS) == "cg"


def test_the_engine_builds_and_budgets_the_solver_auto_picks(relu: nn.Sequential, data: Data) -> None:
    config = _config(solver="auto", curvature="gauss_newton", exact_max_parameters=50, auto_cg_max_flops=1.0)
    engine = FullInfluence(relu, data[0], data[1], _ones(), config)
    assert engine.solver == "ekfac" and engine.solver_reason.startswith("auto: CG's job estimated")
    direction, info = engine.solve(torch.ones(engine.parameter_count, dtype=torch.float64), "test")
    assert info["solver"] == "ekfac" and bool(torch.isfinite(direction).all())
