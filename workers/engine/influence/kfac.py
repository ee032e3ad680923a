"""EK-FAC: a block-diagonal, Kronecker-factored inverse of the Gauss-Newton matrix (``solver: ekfac``).

For a network with one logit z, the Gauss-Newton matrix of ``Σ wᵢℓᵢ`` is
``G = Σᵢ cᵢ ∇zᵢ∇zᵢᵀ`` with ``cᵢ = wᵢ pᵢ(1 − pᵢ)``. Restricted to one Linear layer (bias folded in
as a last input column of ones) a sample's logit gradient is the outer product ``sᵢ aᵢᵀ`` of the
gradient at the layer's output and its input, so the layer's block is
``Σᵢ cᵢ (sᵢsᵢᵀ) ⊗ (aᵢaᵢᵀ)``. K-FAC (Martens & Grosse 2015) replaces it by ``S ⊗ A`` with
``S = Σ cᵢ sᵢsᵢᵀ``, ``A = Σ aᵢaᵢᵀ``; EK-FAC (George et al. 2018, the curvature kronfluence uses)
keeps K-FAC's eigenbasis ``Q_S ⊗ Q_A`` and refits the eigenvalues to the exact per-sample
second moments in that basis, ``Λ_jk = Σᵢ cᵢ (Q_Sᵀ Gᵢ Q_A)²_jk`` (``Gᵢ`` the sample's gradient
matrix), which is the best diagonal in that basis. A Conv2d layer is the same with ``aᵢ`` its
unfolded input patches and ``sᵢ`` its output gradients at every position (KFC, Grosse & Martens
2016: positions treated as independent samples in the factors; the eigenvalue refit uses the
exact per-sample gradient ``Gᵢ = Σ_t s_it a_itᵀ``). Parameters of any other module (a
BatchNorm's affine weights) get the exact diagonal of G from per-sample logit gradients of those
parameters only.

The inverse is then exact per block: ``(G̃ + μI)⁻¹ v = Q (Λ + μ)⁻¹ Qᵀ v``, with
``μ = l2_reg + damping`` (the same shift as every other solver), so a solve costs two small
matrix products per layer and no pass over the data. Building the factors costs two passes
(factors, then eigenvalues), each one forward and one backward pass per chunk of rows, plus one
eigendecomposition per factor (sizes: each layer's fan-in + 1 and fan-out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from workers.engine.errors import InputError

__all__ = ["EKFACFactor", "build_ekfac", "ekfac_factor_entries", "ekfac_layers"]

Rows = slice
ROTATION_BLOCK_BYTES = 64 * 2**20
"""Working memory allowed to the per-sample rotated gradients of one Conv2d layer at a time."""


@dataclass
class _Block:
    """One Linear or Conv2d layer: where its weight (and bias) sit in the flat vector, and its
    eigenbasis and refitted eigenvalues."""

    module: nn.Module
    weight: slice
    bias: slice | None
    out_features: int
    in_features: int  # fan-in, plus 1 when the layer has a bias
    basis_out: torch.Tensor | None = None  # Q_S (out, out)
    basis_in: torch.Tensor | None = None  # Q_A (in, in)
    eigenvalues: torch.Tensor | None = None  # Λ (out, in)


def _covered(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and isinstance(module.padding, tuple)
    return isinstance(module, nn.Linear)


def ekfac_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network's modules EK-FAC factors (Linear, and Conv2d with groups 1 and explicit
    padding), in ``named_modules`` order."""
    return [(name, m) for name, m in network.named_modules() if _covered(m)]


def _fan(module: nn.Module) -> tuple[int, int]:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    fan_in = int(weight[0].numel()) + (1 if getattr(module, "bias", None) is not None else 0)
    return int(weight.shape[0]), fan_in


def ekfac_factor_entries(network: nn.Module) -> int:
    """Float entries EK-FAC keeps: per layer the two factors, their eigenvectors and Λ."""
    return sum(2 * (out * out + fan_in * fan_in) + out * fan_in
               for out, fan_in in (_fan(m) for _, m in ekfac_layers(network)))


def _parameter_slices(network: nn.Module) -> dict[str, slice]:
    slices, offset = {}, 0
    for name, param in network.named_parameters():
        slices[name] = slice(offset, offset + param.numel())
        offset += param.numel()
    return slices


def _inputs_of(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """(b, positions, fan-in) layer inputs (with a column of ones for the bias)."""
    if isinstance(module, nn.Conv2d):
        padding = cast(tuple[int, ...], module.padding)  # _covered refuses string padding
        patches = F.unfold(inputs, module.kernel_size, module.dilation, padding, module.stride)
        columns = patches.transpose(1, 2)
    else:
        columns = inputs.reshape(inputs.shape[0], 1, -1)
    if module.bias is not None:
        columns = torch.cat([columns, columns.new_ones(*columns.shape[:2], 1)], dim=2)
    return columns


def _outputs_of(module: nn.Module, gradient: torch.Tensor) -> torch.Tensor:
    """(b, positions, fan-out) output gradients."""
    if isinstance(module, nn.Conv2d):
        return gradient.flatten(2).transpose(1, 2)
    return gradient.reshape(gradient.shape[0], 1, -1)


@contextmanager
def _captured(modules: list[nn.Module]) -> Iterator[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]]:
    """Record each module's input and the gradient at its output during forward/backward."""
    inputs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}
    handles = []
    for index, module in enumerate(modules):
        def forward_hook(_m: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor,
                         index: int = index) -> None:
            inputs[index] = args[0].detach()

            def save(g: torch.Tensor) -> None:
                grads[index] = g.detach()
            output.register_hook(save)  # type: ignore[no-untyped-call]
        handles.append(module.register_forward_hook(forward_hook))
    try:
        yield inputs, grads
    finally:
        for handle in handles:
            handle.remove()


class EKFACFactor:
    """The EK-FAC approximation of ``G + μI`` over a network's parameters, ready to solve with.

    Build with :func:`build_ekfac`.
    """

    def __init__(self, blocks: list[_Block], diagonal: dict[str, tuple[slice, torch.Tensor]],
                 parameters: int) -> None:
        self.blocks, self.diagonal, self.parameters = blocks, diagonal, parameters

    def solve(self, vector: torch.Tensor, shift: float) -> torch.Tensor:
        """``(G̃ + μI)⁻¹ v`` for a flat v (P,) and the shift μ > 0 (l2_reg + damping)."""
        out = torch.empty_like(vector)
        for block in self.blocks:
            assert block.basis_out is not None and block.basis_in is not None
            assert block.eigenvalues is not None
            matrix = vector[block.weight].reshape(block.out_features, -1)
            if block.bias is not None:
                matrix = torch.cat([matrix, vector[block.bias].reshape(-1, 1)], dim=1)
            rotated = block.basis_out.T @ matrix @ block.basis_in
            rotated = rotated / (block.eigenvalues + shift)
            back = block.basis_out @ rotated @ block.basis_in.T
            if block.bias is not None:
                out[block.bias] = back[:, -1]
                back = back[:, :-1]
            out[block.weight] = back.reshape(-1)
        for where, values in self.diagonal.values():
            out[where] = vector[where] / (values + shift)
        return out

    def describe(self) -> dict[str, Any]:
        """Diagnostics: the layers factored, the parameters on the exact diagonal and the largest
        refitted eigenvalue."""
        eigen = [b.eigenvalues for b in self.blocks if b.eigenvalues is not None]
        top = max((float(e.max()) for e in eigen), default=0.0)
        return {"ekfac_layers": len(self.blocks),
                "ekfac_diagonal_parameters": sum(v.numel() for _, v in self.diagonal.values()),
                "ekfac_top_eigenvalue": top}


ChunkData = tuple[torch.Tensor, torch.Tensor]
"""(features, sample weights wᵢ) of a chunk of rows."""


def _coefficients(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``cᵢ = wᵢ pᵢ(1 − pᵢ)``, the Gauss-Newton weight of each row's logit."""
    probability = torch.sigmoid(logits)
    return weights * probability * (1 - probability)


def build_ekfac(network: nn.Module, params: dict[str, torch.Tensor],
                chunks: Callable[[], Iterator[ChunkData]]) -> EKFACFactor:
    """EK-FAC factors of ``Σ cᵢ ∇zᵢ∇zᵢᵀ`` at ``params`` (float64).

    Args:
        network: the (float64) network; its parameters are replaced by ``params`` in the passes.
        params: flat-view parameter dict (``named_parameters`` names).
        chunks: yields (features, wᵢ) per chunk of rows; called once per pass.

    Raises:
        InputError: the network has no Linear or Conv2d layer.
    """
    modules = [m for _, m in ekfac_layers(network)]
    if not modules:
        raise InputError("influence.solver 'ekfac' factors Linear and Conv2d layers and the model has "
                         "none: use influence.solver 'cg'")
    slices = _parameter_slices(network)
    names = {id(m): name for name, m in network.named_modules()}
    blocks, factored = [], set()
    for module in modules:
        prefix = names[id(module)] + "." if names[id(module)] else ""
        out, fan_in = _fan(module)
        bias = slices[prefix + "bias"] if module.bias is not None else None
        blocks.append(_Block(module, slices[prefix + "weight"], bias, out, fan_in))
        factored |= {prefix + "weight", prefix + "bias"}
    rest = [name for name in slices if name not in factored]
    _fit_bases(network, params, modules, blocks, chunks)
    _fit_eigenvalues(network, params, modules, blocks, chunks)
    diagonal = _diagonal(network, params, rest, slices, chunks)
    return EKFACFactor(blocks, diagonal, sum(p.numel() for p in params.values()))


def _forward_backward(network: nn.Module, params: dict[str, torch.Tensor], features: torch.Tensor,
                      ) -> torch.Tensor:
    """Run the chunk forward and backpropagate Σ zᵢ (each zᵢ depends on row i only, so the
    gradient at a layer's output is each row's own ∂zᵢ/∂output); returns the logits."""
    detached = {k: v.detach() for k, v in params.items()}
    with torch.enable_grad():
        start = features.detach().requires_grad_(True)
        logits: torch.Tensor = functional_call(network, detached, (start,)).reshape(-1)
        torch.autograd.grad(logits.sum(), start)
    return logits.detach()


def _fit_bases(network: nn.Module, params: dict[str, torch.Tensor], modules: list[nn.Module],
               blocks: list[_Block], chunks: Callable[[], Iterator[ChunkData]]) -> None:
    """Pass 1: ``A = Σ aaᵀ`` and ``S = Σ c ssᵀ`` per layer, then their eigenvectors."""
    device = next(iter(params.values())).device
    covariances_in = [torch.zeros(b.in_features, b.in_features, dtype=torch.float64, device=device)
                      for b in blocks]
    covariances_out = [torch.zeros(b.out_features, b.out_features, dtype=torch.float64, device=device)
                       for b in blocks]
    for features, weights in chunks():
        with _captured(modules) as (inputs, grads):
            coefficients = _coefficients(_forward_backward(network, params, features), weights)
        for index, module in enumerate(modules):
            a = _inputs_of(module, inputs[index]).flatten(0, 1)
            s = _outputs_of(module, grads[index])
            weighted = s * coefficients.reshape(-1, 1, 1)
            covariances_in[index] += a.T @ a
            covariances_out[index] += weighted.flatten(0, 1).T @ s.flatten(0, 1)
    for block, c_in, c_out in zip(blocks, covariances_in, covariances_out, strict=True):
        block.basis_in = torch.linalg.eigh(0.5 * (c_in + c_in.T)).eigenvectors
        block.basis_out = torch.linalg.eigh(0.5 * (c_out + c_out.T)).eigenvectors


def _fit_eigenvalues(network: nn.Module, params: dict[str, torch.Tensor], modules: list[nn.Module],
                     blocks: list[_Block], chunks: Callable[[], Iterator[ChunkData]]) -> None:
    """Pass 2: ``Λ = Σ cᵢ (Q_Sᵀ Gᵢ Q_A)²`` with Gᵢ each row's exact gradient matrix."""
    for block in blocks:
        block.eigenvalues = torch.zeros(block.out_features, block.in_features, dtype=torch.float64,
                                        device=next(iter(params.values())).device)
    for features, weights in chunks():
        with _captured(modules) as (inputs, grads):
            coefficients = _coefficients(_forward_backward(network, params, features), weights)
        for index, (module, block) in enumerate(zip(modules, blocks, strict=True)):
            assert block.basis_in is not None and block.basis_out is not None
            assert block.eigenvalues is not None
            a = _inputs_of(module, inputs[index]) @ block.basis_in  # (b, T, in)
            s = _outputs_of(module, grads[index]) @ block.basis_out  # (b, T, out)
            if a.shape[1] == 1:  # Linear: Gᵢ = sᵢaᵢᵀ is rank one, so its square is an outer product
                block.eigenvalues += (coefficients.reshape(-1, 1) * s[:, 0] ** 2).T @ (a[:, 0] ** 2)
                continue
            per_row = block.out_features * block.in_features * 8 * 2
            step = max(1, ROTATION_BLOCK_BYTES // per_row)
            for start in range(0, a.shape[0], step):
                rotated = s[start:start + step].transpose(1, 2) @ a[start:start + step]  # (b, out, in)
                block.eigenvalues += torch.einsum("b,bjk->jk", coefficients[start:start + step], rotated**2)


def _diagonal(network: nn.Module, params: dict[str, torch.Tensor], names: list[str],
              slices: dict[str, slice], chunks: Callable[[], Iterator[ChunkData]],
              ) -> dict[str, tuple[slice, torch.Tensor]]:
    """Exact ``diag(Σ cᵢ ∇zᵢ∇zᵢᵀ)`` for the parameters ``names`` outside the factored layers,
    from per-sample logit gradients of those parameters only."""
    if not names:
        return {}
    fixed = {k: v.detach() for k, v in params.items() if k not in names}

    def logit(subset: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = functional_call(network, {**fixed, **subset}, (x.unsqueeze(0),)).reshape(())
        return value

    per_sample = vmap(grad(logit), in_dims=(None, 0))
    subset = {k: params[k].detach() for k in names}
    totals = {k: torch.zeros_like(v) for k, v in subset.items()}
    for features, weights in chunks():
        with torch.no_grad():
            logits = functional_call(network, params, (features,)).reshape(-1)
        coefficients = _coefficients(logits, weights)
        grads = per_sample(subset, features)
        for k in names:
            shape = (-1,) + (1,) * (grads[k].ndim - 1)
            totals[k] += (coefficients.reshape(shape) * grads[k] ** 2).sum(0)
    return {k: (slices[k], totals[k].reshape(-1)) for k in names}
