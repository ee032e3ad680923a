"""Full-network CG (``influence.solver: cg``): mixed precision checked in float64 and refined or
finished in float64 when float32 is not enough; directions recycled between solves at the same
parameters, weights and damping, and dropped when they move."""

from __future__ import annotations

import pytest
import torch

from tests.engine.influence.problems import Problem, random_problem
from workers.engine.config import InfluenceConfig
from workers.engine.influence.full import FullInfluence

N = 600


@pytest.fixture(scope="module")
def problem() -> Problem:
    return random_problem(N, (16, 8))


def _engine(problem: Problem, **overrides: object) -> FullInfluence:
    network, features, labels = problem
    settings: dict[str, object] = {"scope": "full", "solver": "cg", "chunk_size": 256,
                                   "cg_preconditioner_rows": 128}
    settings.update(overrides)
    return FullInfluence(network, features, labels, torch.ones(N, dtype=torch.float64),
                         InfluenceConfig(**settings))  # type: ignore[arg-type]


def _right_hand_sides(engine: FullInfluence, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size = engine.parameter_count
    return [torch.randn(size, generator=generator, dtype=torch.float64) for _ in range(count)]


def _true_residual(engine: FullInfluence, solution: torch.Tensor, rhs: torch.Tensor) -> float:
    return float((engine.hvp(solution) - rhs).norm() / rhs.norm())


def test_mixed_precision_solutions_meet_the_tolerance_in_float64(problem: Problem) -> None:
    mixed, exact = _engine(problem), _engine(problem, cg_precision="float64")
    for rhs in _right_hand_sides(mixed, 3):
        solution, info = mixed.solve(rhs, "test")
        reference, _ = exact.solve(rhs, "test")
        assert info["precision"] == "mixed" and info["float64_products"] >= 1
        assert info["relative_residual"] <= mixed.config.cg_tolerance
        assert _true_residual(mixed, solution, rhs) == pytest.approx(info["relative_residual"], rel=1e-6)
        # Two solutions within the tolerance differ by at most about κ·tolerance; measured 1e-5.
        assert float((solution - reference).norm() / reference.norm()) <= 1e-3


def test_a_tolerance_past_float32_is_reached_by_refinement(problem: Problem) -> None:
    engine = _engine(problem, cg_tolerance=1e-11, cg_recycle_vectors=0)
    (rhs,) = _right_hand_sides(engine, 1)
    solution, info = engine.solve(rhs, "test")
    assert info["precision"] == "mixed"
    assert info["float64_products"] >= 3  # each float32 run gains at most 1e-4
    assert _true_residual(engine, solution, rhs) <= 1e-11


def test_float32_products_that_cannot_be_verified_are_finished_in_float64(problem: Problem) -> None:
    engine = _engine(problem)
    exact = engine.hvp
    engine.low_precision_hvp = lambda vector, stage="hvp": 0.1 * exact(vector, stage)  # type: ignore[method-assign]
    (rhs,) = _right_hand_sides(engine, 1)
    solution, info = engine.solve(rhs, "test")
    assert info["precision"].startswith("mixed, finished in float64")
    assert _true_residual(engine, solution, rhs) <= engine.config.cg_tolerance


def test_later_solves_recycle_the_earlier_ones_directions(problem: Problem) -> None:
    recycling, plain = _engine(problem), _engine(problem, cg_recycle_vectors=0)
    rhs = _right_hand_sides(recycling, 4)
    recycled = [recycling.solve(vector, "test") for vector in rhs]
    fresh = [plain.solve(vector, "test") for vector in rhs]
    assert recycled[0][1]["recycled"] == 0
    assert all(info["recycled"] > 0 for _, info in recycled[1:])
    later = [info["iterations"] for _, info in recycled[1:]]
    assert sum(later) < sum(info["iterations"] for _, info in fresh[1:])
    for (solution, info), vector in zip(recycled, rhs, strict=True):
        assert info["relative_residual"] <= recycling.config.cg_tolerance
        assert _true_residual(recycling, solution, vector) <= recycling.config.cg_tolerance


@pytest.mark.parametrize("move", ["parameters", "weights", "damping"])
def test_moving_the_matrix_drops_the_recycled_directions(problem: Problem, move: str) -> None:
    engine = _engine(problem)
    first, second = _right_hand_sides(engine, 2)
    engine.solve(first, "test")
    if move == "parameters":
        engine.set_parameters(engine.flat_parameters() * 0.9)
    elif move == "weights":
        engine.set_weights(torch.linspace(0.5, 1.5, N, dtype=torch.float64))
    else:
        engine.damping *= 2.0
    solution, info = engine.solve(second, "test")
    assert info["recycled"] == 0
    assert _true_residual(engine, solution, second) <= engine.config.cg_tolerance


def test_recycling_keeps_the_configured_directions_where_memory_allows(problem: Problem) -> None:
    assert _engine(problem).recycle_capacity == InfluenceConfig().cg_recycle_vectors
    assert _engine(problem, cg_recycle_vectors=7).recycle_capacity == 7
    assert _engine(problem, solver="lissa").recycle_capacity == 0
