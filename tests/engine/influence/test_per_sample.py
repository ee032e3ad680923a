"""Per-sample logit gradients from one backward pass: the same as vmap(grad), and declined where
the network is not made of Linear layers applied to the rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from workers.engine.influence.per_sample import linear_logit_gradients


def _vmapped(network: nn.Module, params: dict[str, torch.Tensor], features: torch.Tensor,
             ) -> dict[str, torch.Tensor]:
    def logit(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = functional_call(network, p, (x.unsqueeze(0),)).reshape(())
        return value
    out: dict[str, torch.Tensor] = vmap(grad(logit), in_dims=(None, 0))(params, features)
    return out


def _params(network: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in network.named_parameters()}


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.GELU])
def test_linear_networks_get_the_gradients_vmap_gives(activation: type[nn.Module]) -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(7, 6), activation(), nn.Linear(6, 5, bias=False), activation(),
                            nn.Linear(5, 1)).double()
    features = torch.randn(40, 7, dtype=torch.float64)
    params = {name: value * 1.5 for name, value in _params(network).items()}  # not the module's own
    got = linear_logit_gradients(network, params, features)
    assert got is not None and list(got) == list(params)
    for name, expected in _vmapped(network, params, features).items():
        torch.testing.assert_close(got[name], expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("network", [
    nn.Sequential(nn.Linear(4, 3), nn.PReLU(), nn.Linear(3, 1)),  # a parameter outside Linear layers
    nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 1)),  # rows interact
], ids=["prelu", "batchnorm"])
def test_other_networks_are_left_to_vmap(network: nn.Module) -> None:
    network = network.double()
    assert linear_logit_gradients(network, _params(network), torch.randn(8, 4, dtype=torch.float64)) is None


def test_a_layer_used_twice_is_left_to_vmap() -> None:
    layer = nn.Linear(3, 3).double()
    network = nn.Sequential(layer, nn.Tanh(), layer, nn.Linear(3, 1)).double()
    assert linear_logit_gradients(network, _params(network), torch.randn(8, 3, dtype=torch.float64)) is None
