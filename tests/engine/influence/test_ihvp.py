"""Conjugate gradient with recycled directions (deflated CG) on explicit SPD matrices: the same
solutions in fewer products, an A-orthonormal basis, and a capacity that is respected."""

from __future__ import annotations

import pytest
import torch

from workers.engine.errors import IllConditionedError
from workers.engine.influence.ihvp import KrylovBasis, conjugate_gradient

SIZE = 120
TOLERANCE = 1e-8


def _spd(seed: int = 0) -> torch.Tensor:
    """An SPD matrix with a spread spectrum (1 to 1e4), like a damped Gauss-Newton matrix's."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(SIZE, SIZE, generator=generator, dtype=torch.float64))
    spectrum = torch.logspace(0, 4, SIZE, dtype=torch.float64)
    matrix: torch.Tensor = (basis * spectrum) @ basis.T
    return matrix


def _right_hand_sides(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(SIZE, generator=generator, dtype=torch.float64) for _ in range(count)]


def _solve_all(matrix: torch.Tensor, rhs: list[torch.Tensor], recycle: KrylovBasis | None,
               ) -> tuple[list[torch.Tensor], list[int]]:
    solutions, products = [], []
    for vector in rhs:
        solution, info = conjugate_gradient(lambda v: matrix @ v, vector, TOLERANCE, 1000, "test",
                                            recycle=recycle)
        solutions.append(solution)
        products.append(int(info["iterations"]))
    return solutions, products


def test_recycled_solves_reach_the_tolerance_in_fewer_products() -> None:
    matrix = _spd()
    rhs = _right_hand_sides(5)
    plain, plain_products = _solve_all(matrix, rhs, None)
    recycled, recycled_products = _solve_all(matrix, rhs, KrylovBasis(SIZE, 400, matrix))
    assert recycled_products[0] == plain_products[0]  # nothing to recycle yet
    assert sum(recycled_products[1:]) < 0.8 * sum(plain_products[1:])
    for vector, solution, reference in zip(rhs, recycled, plain, strict=True):
        assert float((matrix @ solution - vector).norm() / vector.norm()) <= 2 * TOLERANCE
        assert float((solution - reference).norm() / reference.norm()) <= 1e-5


def test_the_basis_is_a_orthonormal_and_drops_what_it_already_spans() -> None:
    matrix = _spd()
    basis = KrylovBasis(SIZE, 400, matrix)
    _solve_all(matrix, _right_hand_sides(3), basis)
    assert basis.rank <= SIZE
    identity = torch.eye(SIZE, dtype=torch.float64)
    orthonormal = torch.stack([basis.start(column)[0] for column in identity], dim=1)  # W Wᵀ
    projector = orthonormal @ matrix  # W Wᵀ A: a projection when Wᵀ A W = I
    torch.testing.assert_close(projector @ projector, projector, atol=1e-8, rtol=0.0)
    before = basis.count
    inside = basis.start(_right_hand_sides(1, seed=7)[0])[0]  # W Wᵀ b lies in the span
    basis.extend([inside], [matrix @ inside])
    assert basis.count == before


def test_a_full_basis_keeps_its_size_and_still_serves_solves() -> None:
    matrix = _spd()
    basis = KrylovBasis(SIZE, 10, matrix)
    rhs = _right_hand_sides(3)
    solutions, _ = _solve_all(matrix, rhs, basis)
    assert basis.count == 10
    for vector, solution in zip(rhs, solutions, strict=True):
        assert float((matrix @ solution - vector).norm() / vector.norm()) <= 2 * TOLERANCE


def test_a_right_hand_side_inside_the_basis_needs_no_product() -> None:
    matrix = _spd()
    basis = KrylovBasis(SIZE, 400, matrix)
    (first,) = _right_hand_sides(1)
    solution, _ = conjugate_gradient(lambda v: matrix @ v, first, TOLERANCE, 1000, "test", recycle=basis)
    again, info = conjugate_gradient(lambda v: matrix @ v, 2.0 * first, 100 * TOLERANCE, 1000, "test",
                                     recycle=basis)
    assert info["iterations"] == 0 and info["recycled"] == basis.count
    torch.testing.assert_close(again, 2.0 * solution, rtol=1e-6, atol=0.0)


def test_a_preconditioner_that_is_not_positive_definite_is_refused_with_advice() -> None:
    matrix = _spd()
    (vector,) = _right_hand_sides(1)
    with pytest.raises(IllConditionedError, match=r"stage 'test'.*cg_preconditioner_rows"):
        conjugate_gradient(lambda v: matrix @ v, vector, TOLERANCE, 1000, "test", preconditioner=lambda r: -r)
