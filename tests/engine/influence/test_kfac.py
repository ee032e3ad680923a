"""EK-FAC (``solver: 'ekfac'``): its eigenpairs against the exact Gauss-Newton products.

EK-FAC's matrix is ``Q diag(Λ) Qᵀ`` per layer with ``Q = Q_S ⊗ Q_A`` orthogonal and ``Λ`` refitted
so that ``Λ_jk = eᵀ G e`` for every basis vector ``e = q_S,j ⊗ q_A,k`` (G the exact Gauss-Newton
block of the layer). Whatever bases the factors gave, that identity pins the implementation down:
for each such e, ``solve(e) = e / (eᵀ(G + μI)e)``, where ``(G + μI)e`` comes from the engine's
exact Gauss-Newton product (an independent code path). Parameters outside Linear/Conv2d layers
sit on the exact diagonal, with the same identity for unit vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.config import InfluenceConfig
from workers.engine.influence.full import FullInfluence
from workers.engine.influence.kfac import EKFACFactor

N, MU = 120, 0.7


class _Net(nn.Module):
    """A Conv2d (with bias), a bias-free Conv2d, a BatchNorm (diagonal), then two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(),
                                      nn.Conv2d(3, 2, 2, stride=2, bias=False), nn.BatchNorm2d(2),
                                      nn.Softplus(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(18, 4), nn.Tanh(), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def _engine() -> tuple[FullInfluence, EKFACFactor]:
    torch.manual_seed(0)
    network = _Net().eval()
    norm = network.features[3]
    assert isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.weight.uniform_(0.5, 1.5)
    features = torch.randn(N, 2, 6, 6, dtype=torch.float64)
    labels = (torch.rand(N) < 0.5).to(torch.float64)
    weights = torch.rand(N, dtype=torch.float64) + 0.5
    config = InfluenceConfig(scope="full", solver="ekfac", l2_reg=0.0, damping=MU, chunk_size=32)
    engine = FullInfluence(network, features, labels, weights, config)
    return engine, engine._ekfac_factor()


def _check(engine: FullInfluence, factor: EKFACFactor, vector: torch.Tensor) -> None:
    curvature = float(vector @ engine.hvp(vector))  # eᵀ(G + μI)e, exact product
    torch.testing.assert_close(factor.solve(vector, MU) * curvature, vector, rtol=1e-9, atol=1e-11)


def test_ekfac_eigenpairs_match_the_exact_gauss_newton_curvature() -> None:
    engine, factor = _engine()
    assert len(factor.blocks) == 4
    assert factor.describe()["ekfac_diagonal_parameters"] == 4  # the BatchNorm's weight and bias
    count = engine.parameter_count
    for block in factor.blocks:
        assert block.basis_out is not None and block.basis_in is not None
        for basis in (block.basis_out, block.basis_in):
            torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[0], dtype=torch.float64))
        for j, k in ((0, 0), (block.out_features - 1, block.in_features - 1), (0, block.in_features // 2)):
            matrix = torch.outer(block.basis_out[:, j], block.basis_in[:, k])
            vector = torch.zeros(count, dtype=torch.float64)
            if block.bias is not None:
                vector[block.bias] = matrix[:, -1]
                matrix = matrix[:, :-1]
            vector[block.weight] = matrix.reshape(-1)
            _check(engine, factor, vector)
    for where, _values in factor.diagonal.values():
        for index in range(where.start, where.stop):
            _check(engine, factor, torch.nn.functional.one_hot(torch.tensor(index), count).to(torch.float64))


def test_ekfac_solve_is_symmetric_positive_definite_and_reported() -> None:
    engine, factor = _engine()
    generator = torch.Generator().manual_seed(1)
    u, v = torch.randn(2, engine.parameter_count, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(u @ factor.solve(v, MU), v @ factor.solve(u, MU))
    assert float(u @ factor.solve(u, MU)) > 0
    solution, info = engine.solve(u, "test")
    torch.testing.assert_close(solution, factor.solve(u, MU))
    assert info["solver"] == "ekfac" and info["relative_residual"] is None and info["ekfac_layers"] == 4
