"""Kept product graphs: the same products as graphs built afresh, dropped when the parameters or
weights move, and kept only where the memory cap leaves room for them (after mixed-precision
CG's float32 graphs and recycled directions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.engine.influence.problems import random_problem
from workers.engine.config import InfluenceConfig
from workers.engine.influence.full import GIB, FullInfluence, estimate_memory_bytes
from workers.engine.influence.products import kept_graph_bytes

N = 300


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return random_problem(N, (8, 4))


def _influence(problem: tuple[nn.Module, torch.Tensor, torch.Tensor], curvature: str,
               **overrides: object) -> FullInfluence:
    network, features, labels = problem
    settings: dict[str, object] = {"scope": "full", "solver": "cg", "curvature": curvature, "chunk_size": 128}
    settings.update(overrides)
    return FullInfluence(network, features, labels, torch.ones(N, dtype=torch.float64),
                         InfluenceConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("curvature", ["gauss_newton", "hessian"])
def test_kept_graphs_give_the_products_of_fresh_ones(problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
                                                     curvature: str) -> None:
    kept, fresh = _influence(problem, curvature), _influence(problem, curvature)
    fresh.keep_graphs = False
    assert kept.keep_graphs
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # the second and third products reuse the first one's graphs
        vector = torch.randn(kept.parameter_count, generator=generator, dtype=torch.float64)
        assert torch.equal(kept.hvp(vector), fresh.hvp(vector))


@pytest.mark.parametrize("move", ["parameters", "weights"])
def test_moving_the_parameters_or_weights_drops_the_kept_graphs(
        problem: tuple[nn.Module, torch.Tensor, torch.Tensor], move: str) -> None:
    kept, fresh = _influence(problem, "gauss_newton"), _influence(problem, "gauss_newton")
    fresh.keep_graphs = False
    generator = torch.Generator().manual_seed(2)
    vector = torch.randn(kept.parameter_count, generator=generator, dtype=torch.float64)
    kept.hvp(vector)
    for influence in (kept, fresh):
        if move == "parameters":
            influence.set_parameters(influence.flat_parameters() * 0.5)
        else:
            influence.set_weights(torch.linspace(0.1, 2.0, N, dtype=torch.float64))
    assert torch.equal(kept.hvp(vector), fresh.hvp(vector))


def test_the_memory_cap_goes_to_float32_graphs_then_recycled_directions_then_float64_graphs(
        problem: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    roomy = _influence(problem, "gauss_newton")
    width = 6 + 8 + 8 + 4 + 4 + 1  # the Linear layers' inputs and outputs
    estimate = estimate_memory_bytes(N, roomy.parameter_count, roomy.config, width)
    low, high = kept_graph_bytes(N, width, 4), kept_graph_bytes(N, width)
    pair = 2 * 8 * roomy.parameter_count
    directions = pair * roomy.config.cg_recycle_vectors

    def plan(headroom: float, precision: str = "mixed") -> tuple[bool, int, bool]:
        influence = _influence(problem, "gauss_newton", cg_precision=precision,
                               max_memory_gb=(estimate + headroom) / GIB)
        return influence.keep_low_graphs, influence.recycle_capacity, influence.keep_graphs

    assert plan(0.999 * low) == (False, int(0.999 * low // pair), False)
    assert plan(low + 0.999 * directions) == (True, int(0.999 * directions // pair), False)
    assert plan(low + directions + 0.999 * high) == (True, roomy.config.cg_recycle_vectors, False)
    assert plan(low + directions + 1.001 * high) == (True, roomy.config.cg_recycle_vectors, True)
    assert plan(directions + 1.001 * high, "float64") == (False, roomy.config.cg_recycle_vectors, True)


def test_kept_graphs_give_the_per_sample_products_forward_mode_gives(
        problem: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    kept, fresh = _influence(problem, "gauss_newton"), _influence(problem, "gauss_newton")
    fresh.keep_graphs = False
    generator = torch.Generator().manual_seed(3)
    kept.hvp(torch.randn(kept.parameter_count, generator=generator, dtype=torch.float64))  # builds them
    for shape in ((kept.parameter_count,), (kept.parameter_count, 3)):
        vector = torch.randn(*shape, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(kept.per_sample_dot(vector), fresh.per_sample_dot(vector),
                                   rtol=1e-12, atol=1e-14)
