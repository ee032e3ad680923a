"""CG's row-sketch preconditioner: exact when every row fits, fewer products when sampled, and
never a different solution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workers.engine.config import InfluenceConfig
from workers.engine.influence.full import FullInfluence
from workers.engine.influence.sketch import (
    MIN_SKETCH_ROWS,
    SKETCH_MAX_BYTES,
    draw_sketch_rows,
    sketch_row_count,
)
from workers.engine.io.architecture import ArchSpec
from workers.engine.models.training import train_mlp

N = 600
Problem = tuple[nn.Module, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def problem() -> Problem:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 6)) * np.array([4.0, 1.0, 1.0, 0.3, 0.3, 0.1])
    y = (rng.random(N) < 1 / (1 + np.exp(-(x[:, 0] - x[:, 1] * x[:, 2])))).astype(np.float64)
    network = train_mlp(ArchSpec(6, (12,)), x.astype(np.float32), y, seed=0, epochs=30, batch_size=N,
                        lr=5e-2, weight_decay=0.0)
    return network, torch.from_numpy(x), torch.from_numpy(y)


def _engine(problem: Problem, weights: torch.Tensor | None = None,
            **settings: object) -> FullInfluence:
    network, x, y = problem
    config = InfluenceConfig(**{"scope": "full", "solver": "cg", "cg_tolerance": 1e-10, **settings})  # type: ignore[arg-type]
    return FullInfluence(network, x, y, torch.ones(N, dtype=torch.float64) if weights is None else weights,
                         config)


def _rhs(engine: FullInfluence) -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, engine.parameter_count, dtype=torch.float64)


@pytest.mark.parametrize(("precision", "tolerance"), [("float64", 1e-8), ("mixed", 2e-3)])
def test_with_every_row_the_preconditioner_is_the_damped_gauss_newton_inverse(
        problem: Problem, precision: str, tolerance: float) -> None:
    # Mixed-precision CG applies the sketch in float32: Woodbury's r − Uᵀ(σI + UUᵀ)⁻¹Ur cancels
    # about λ_max/σ of float32's rounding (measured 3e-4 here), harmless in a preconditioner.
    engine = _engine(problem, cg_preconditioner_rows=N, cg_precision=precision)
    sketch = engine._row_sketch("test")
    assert sketch is not None and sketch.rows == N
    assert sketch.factor.dtype == (torch.float32 if precision == "mixed" else torch.float64)
    vector = _rhs(engine)
    assert torch.allclose(sketch.apply(engine.hvp(vector)), vector, rtol=tolerance, atol=tolerance)
    _, info = engine.solve(vector, "test")
    assert info["preconditioner"]["rows"] == N and info["relative_residual"] <= 1e-10
    # One product per float32 run when M is A (mixed: three runs of 1e-4 reach 1e-10).
    assert info["iterations"] <= (2 if precision == "float64" else 6)


def test_a_sampled_sketch_reaches_the_plain_cg_solution_in_fewer_products(problem: Problem) -> None:
    vector = _rhs(_engine(problem))
    plain, plain_info = _engine(problem, cg_preconditioner_rows=0).solve(vector, "test")
    sketched, info = _engine(problem, cg_preconditioner_rows=MIN_SKETCH_ROWS).solve(vector, "test")
    assert plain_info["preconditioner"] is None and info["preconditioner"]["rows"] == MIN_SKETCH_ROWS
    assert float((sketched - plain).norm() / plain.norm()) < 1e-8
    # A quarter of the rows, drawn by curvature, carries the few large eigenvalues that set
    # plain CG's count (measured here: 45 products plain, 20 sketched).
    assert info["iterations"] <= 0.6 * plain_info["iterations"], (info, plain_info)
    assert float(info["relative_residual"]) <= 1e-9


def test_the_sketch_follows_a_damping_change_and_is_dropped_with_new_parameters(problem: Problem) -> None:
    engine = _engine(problem, cg_preconditioner_rows=N)
    first = engine._row_sketch("test")
    engine.damping *= 10
    shifted = engine._row_sketch("test")
    assert first is not None and shifted is not None
    assert shifted.shift == pytest.approx(engine.l2_reg + engine.damping)
    assert shifted.factor is first.factor
    engine.set_parameters(engine.flat_parameters() * 1.01)
    assert engine._row_sketch("test") is not first


def test_the_draw_is_seeded_proportional_to_curvature_and_uses_magnitudes() -> None:
    curvature = torch.tensor([0.0, 1.0, -3.0, 0.0] * 50, dtype=torch.float64)
    index, scale = draw_sketch_rows(curvature, 1000) or (np.array([]), np.array([]))
    assert index.tolist() == list(range(200)) and scale[2] == pytest.approx(np.sqrt(3.0))
    drawn = draw_sketch_rows(curvature, 150)
    assert drawn is not None
    again = draw_sketch_rows(curvature, 150)
    assert again is not None and np.array_equal(drawn[0], again[0])
    rows = drawn[0] % 4
    assert set(rows.tolist()) <= {1, 2} and 0.6 < np.mean(rows == 2) < 0.9  # 3 : 1 by |c|
    assert np.allclose(drawn[1], np.sqrt(200.0 / 150))  # Σ|c| / m per drawn row
    assert draw_sketch_rows(torch.zeros(10, dtype=torch.float64), 5) is None


def test_row_count_respects_the_data_the_memory_budget_and_the_minimum() -> None:
    assert sketch_row_count(1024, 300, 10_000) == 300
    wide = SKETCH_MAX_BYTES // (8 * 512) - 512  # P such that exactly 512 rows fit with their Gram matrix
    assert sketch_row_count(1024, 10**6, wide) == 512
    assert sketch_row_count(100_000, 10**6, 10) <= 8192  # the m × m Gram matrix bounds m too
    assert sketch_row_count(1024, 10**6, 10**7) == 0  # below MIN_SKETCH_ROWS: plain CG
    assert sketch_row_count(0, 10**6, 100) == 0


def test_the_setting_is_validated() -> None:
    with pytest.raises(ValueError, match=r"cg_preconditioner_rows must be in \[0, 100000\]"):
        InfluenceConfig(scope="full", cg_preconditioner_rows=-1)
