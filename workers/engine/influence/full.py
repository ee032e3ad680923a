"""Influence functions over every parameter of an MLP (``influence.scope = 'full'``), in float64.

The objective is the sum form of METHOD.md §1 over *all* parameters (weights and biases)::

    L(θ; w) = Σᵢ wᵢ ℓᵢ(θ) + (λ/2)‖θ‖²,    ℓᵢ = binary cross-entropy of the logit,

with ``H`` its Hessian and ``I_f(i) = gᵢᵀ (H + δI)⁻¹ ∇f`` the predicted change of a target f when
sample i is removed (``gᵢ = ∇ℓᵢ``, unweighted, unregularized). Per-sample gradients are never
formed on the influence paths: ``gᵢᵀv`` for a chunk of rows is one forward-mode product
(``torch.func.jvp``) of its per-row loss vector, and ``Σ εᵢgᵢ`` one reverse pass (``vjp``);
Hessian and Gauss-Newton products are batched over the same chunks (reverse over reverse).
``(H + δI)⁻¹ v`` is solved by ``influence.solver``: ``exact`` (dense matrix, symmetrized,
PD-checked and Cholesky-factorized by :func:`workers.engine.influence.head.factorize`), ``cg`` or
``lissa`` (:mod:`workers.engine.influence.ihvp`), or ``ekfac`` (the Kronecker-factored
approximation of :mod:`workers.engine.influence.kfac`); ``auto`` chooses by size and estimated
cost (:func:`choose_solver`).

**Damping.** A network's Hessian need not be positive definite: the weights come from a
stochastic optimizer, not the exact optimum of ``L``, and the residual term ``Σ (pᵢ − yᵢ)∇²zᵢ`` is
indefinite for ReLU networks. When ``influence.damping`` is 0 the shift is
``δ = DEFAULT_DAMPING_PER_WEIGHT · Σ|wᵢ|`` (1e-3 per unit of sample weight): in sum form the
curvature grows with the data, so a fixed absolute δ would vanish on large sets and dominate
small ones, while 1e-3 per sample is small next to a typical per-sample curvature
``pᵢ(1 − pᵢ)‖∇zᵢ‖²`` (it biases influences by well under a percent on well-determined directions)
and still lifts small negative eigenvalues. An explicit ``damping > 0`` is used as given. The
value used is in every solve's diagnostics.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from workers.engine.config import InfluenceConfig
from workers.engine.errors import IllConditionedError, InputError, NonFiniteError
from workers.engine.influence.head import HessianFactor, factorize
from workers.engine.influence.ihvp import KrylovBasis, MatVec, conjugate_gradient, lissa, top_eigenvalue
from workers.engine.influence.kfac import EKFACFactor, build_ekfac, ekfac_factor_entries, ekfac_layers
from workers.engine.influence.per_sample import linear_logit_gradients
from workers.engine.influence.products import (
    ChunkProduct,
    GaussNewtonGraph,
    hessian_product,
    kept_graph_bytes,
    vector_jacobian_product,
)
from workers.engine.influence.sketch import RowSketch, draw_sketch_rows, sketch_row_count

__all__ = [
    "CG_PASSES_PER_PRODUCT",
    "CG_PRODUCTS_PER_JOB",
    "DEFAULT_DAMPING_PER_WEIGHT",
    "LISSA_SCALE_MARGIN",
    "FullInfluence",
    "NetworkProfile",
    "SolverChoice",
    "activation_width",
    "cg_job_flops",
    "check_memory",
    "choose_solver",
    "estimate_memory_bytes",
    "flat_to_state",
    "objective_gradient",
    "profile_network",
    "resolve_solver",
]

Params = dict[str, torch.Tensor]

DEFAULT_DAMPING_PER_WEIGHT = 1e-3
"""Default damping δ per unit of total sample weight when ``influence.damping`` is 0."""
LISSA_SCALE_MARGIN = 1.1
"""LiSSA's default scale is this times the power-iteration estimate of the top eigenvalue."""
LISSA_SEED = 0
"""Seeds LiSSA's mini-batches and the power iteration's start (results are reproducible)."""
HESSIAN_BLOCK_BYTES = 64 * 2**20
"""Working memory allowed to one batched-HVP call when the dense Hessian is built."""
ACTIVATION_COPIES = 8
"""Copies of a chunk's activations alive at once in a product (primal, tangent or cotangent,
the saved tensors of the double backward, ``vmap``'s batched copies)."""
POLISH_MAX_SHIFTS = 16
"""Attempts at a positive-definite Newton system per polish step (extra damping ×10 each)."""
GIB = 2**30
CG_PRODUCTS_PER_JOB = 105
"""Gauss-Newton products of a default correction job with the preconditioned CG solver: 7 solves
(two influences, five frontier directions) of about 15 products, measured on the Adult MLP."""
CG_PASSES_PER_PRODUCT = 3
"""Forward-pass equivalents of one Gauss-Newton product (one forward, two reverse passes)."""
LOW_PRECISION = torch.float32
"""dtype of CG's products with ``cg_precision: mixed``: 2.7× faster than float64 on the Adult
MLP, relative error 3e-7, far below CG's default tolerance (1e-4)."""
MIXED_REFINEMENTS = 3
"""Low-precision corrections a mixed-precision solve tries before it finishes in float64."""
LOW_PRECISION_REDUCTION = 1e-4
"""Most a low-precision CG run is asked to shrink its right-hand side's residual: past that it
would chase its products' rounding (each correction of iterative refinement gains this factor)."""
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
"""Layers whose few affine parameters EK-FAC keeps on its exact Gauss-Newton diagonal."""


@dataclass(frozen=True)
class NetworkProfile:
    """What ``solver: auto`` weighs besides the parameter count (:func:`profile_network`)."""

    forward_flops_per_row: int
    """Flops (two per multiply-add) of one row's forward pass through its Linear and Conv2d layers."""
    ekfac_covers: bool
    """EK-FAC factors at least one layer and every parameter is in a layer it factors (Linear,
    Conv2d) or in a normalization layer (``NORM_LAYERS``)."""


class SolverChoice(NamedTuple):
    """The solver a job uses and why (the reason is shown in the report's diagnostics)."""

    name: str
    reason: str


def profile_network(network: nn.Module, features: torch.Tensor) -> NetworkProfile:
    """The network's :class:`NetworkProfile` for rows like ``features[0]`` (that one row is run)."""
    return NetworkProfile(_forward_flops_per_row(network, features), _ekfac_covers(network))


def _forward_flops_per_row(network: nn.Module, features: torch.Tensor) -> int:
    """Flops (two per multiply-add) of one row's forward pass through the Linear and Conv2d layers,
    read off one row run through the network in eval mode (so no buffer changes) with hooks
    recording each layer's output size. Torch's flop counter gives the same numbers but its first
    use loads the meta-tensor machinery: 1.5 s, 10 % of a full-scope Adult job."""
    flops = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, nn.Linear):
            flops += 2 * module.in_features * output.numel()
        elif isinstance(module, nn.Conv2d):
            flops += 2 * module.weight[0].numel() * output.numel()

    layers = [m for m in network.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    handles = [layer.register_forward_hook(count) for layer in layers]
    training = network.training
    first = next(network.parameters())
    try:
        network.eval()
        with torch.no_grad():
            network(features[:1].to(device=first.device, dtype=first.dtype))
    finally:
        network.train(training)
        for handle in handles:
            handle.remove()
    return flops


def _ekfac_covers(network: nn.Module) -> bool:
    # Anything else with parameters (an Embedding, a grouped convolution) would sit on EK-FAC's
    # diagonal alone: an approximation no measurement here vouches for, so CG keeps those.
    factored = {id(module) for _, module in ekfac_layers(network)}
    owners = [m for m in network.modules() if next(m.parameters(recurse=False), None) is not None]
    return bool(factored) and all(id(m) in factored or isinstance(m, NORM_LAYERS) for m in owners)


def cg_job_flops(rows: int, profile: NetworkProfile) -> float:
    """Estimated flops of the Gauss-Newton products a correction job makes with CG over ``rows``."""
    return float(profile.forward_flops_per_row) * rows * CG_PASSES_PER_PRODUCT * CG_PRODUCTS_PER_JOB


def choose_solver(parameters: int, config: InfluenceConfig, rows: int = 0,
                  profile: NetworkProfile | None = None) -> SolverChoice:
    """The solver ``config.solver`` means for a model of ``parameters`` parameters trained on
    ``rows`` rows, and why. ``auto``: exact up to ``exact_max_parameters``; past that CG, unless
    its estimated job (:func:`cg_job_flops`) is above ``auto_cg_max_flops`` and EK-FAC can stand
    in (Gauss-Newton curvature, every layer covered); without a ``profile``, CG."""
    if config.solver != "auto":
        return SolverChoice(config.solver, "named by influence.solver")
    if parameters <= config.exact_max_parameters:
        return SolverChoice("exact", f"auto: {parameters:,} parameters, at most influence."
                                     f"exact_max_parameters={config.exact_max_parameters:,}")
    if profile is None:
        return SolverChoice("cg", f"auto: {parameters:,} parameters, above influence.exact_max_parameters")
    flops, budget = cg_job_flops(rows, profile), config.auto_cg_max_flops
    estimate = f"auto: CG's job estimated at {flops:.2g} flops ({parameters:,} parameters, {rows:,} rows)"
    # EK-FAC only where CG is unaffordable: its approximate steps overshoot (Adult 8.8 k: eval
    # DP 0.208 → 0.024 for a requested 0.6 reduction, −1.55 accuracy points against CG's −0.9).
    if flops <= budget:
        return SolverChoice("cg", f"{estimate}, within influence.auto_cg_max_flops={budget:.2g}")
    over = f"{estimate}, above influence.auto_cg_max_flops={budget:.2g}"
    if config.curvature != "gauss_newton":
        return SolverChoice("cg", f"{over}, but EK-FAC approximates only the Gauss-Newton curvature")
    if not profile.ekfac_covers:
        return SolverChoice("cg", f"{over}, but EK-FAC does not cover every layer of the network")
    return SolverChoice("ekfac", over)


def resolve_solver(parameters: int, config: InfluenceConfig, rows: int = 0,
                   profile: NetworkProfile | None = None) -> str:
    """The name of :func:`choose_solver`'s choice."""
    return choose_solver(parameters, config, rows, profile).name


def estimate_memory_bytes(n: int, parameters: int, config: InfluenceConfig, width: int = 0,
                          factor_entries: int = 0, profile: NetworkProfile | None = None) -> int:
    """Dominant working memory (bytes, float64) of a full-network influence job.

    Counts a few dozen solver vectors of P entries, per-row buffers, and the activations of one
    chunk of rows (``width`` floats per row: the layers' inputs and outputs) with the copies the
    forward-mode, reverse-mode and double-backward products keep of them. Per-sample gradients
    are never formed on the influence paths, so nothing scales as rows × P — except for the exact
    solver, whose dense Gauss-Newton matrix is accumulated from a chunk's per-sample logit
    gradients and which also holds the dense P × P matrix with its eigenvalue and Cholesky
    workspaces. CG adds its preconditioner's sketch (m × P and m × m, plus one chunk's per-sample
    logit gradients while it is built). ``factor_entries`` counts EK-FAC's Kronecker factors,
    eigenbases and eigenvalues
    (:func:`workers.engine.influence.kfac.ekfac_factor_entries`). ``profile`` is what ``solver:
    auto`` chooses by (:func:`choose_solver`). Not counted: the training data, and what
    :class:`FullInfluence` keeps only where it fits beside this estimate (the product graphs,
    CG's recycled directions).
    """
    rows = min(n, config.chunk_size)
    total = 32 * parameters * 8 + 4 * n * 8 + ACTIVATION_COPIES * rows * width * 8
    solver = resolve_solver(parameters, config, n, profile)
    if solver == "exact":
        total += 3 * parameters * parameters * 8 + HESSIAN_BLOCK_BYTES + 2 * rows * parameters * 8
    elif solver == "ekfac":
        total += factor_entries * 8
    elif solver == "cg":
        sketch = sketch_row_count(config.cg_preconditioner_rows, n, parameters)
        total += sketch * (parameters + sketch) * 8 + min(sketch, rows) * parameters * 8
    return total


def check_memory(n: int, parameters: int, config: InfluenceConfig, width: int = 0,
                 factor_entries: int = 0, profile: NetworkProfile | None = None) -> int:
    """Refuse a job whose estimated working memory (:func:`estimate_memory_bytes`) exceeds
    ``config.max_memory_gb``; returns the estimate (bytes) of a job that fits.

    Raises:
        InputError: with the estimate and what to change.
    """
    estimate = estimate_memory_bytes(n, parameters, config, width, factor_entries, profile)
    if estimate <= config.max_memory_gb * GIB:
        return estimate
    advice = [f"lower influence.chunk_size (now {config.chunk_size})"]
    if resolve_solver(parameters, config, n, profile) == "exact":
        advice.append(f"use influence.solver 'cg', 'lissa' or 'ekfac' (the dense Hessian of {parameters} "
                      f"parameters alone takes {3 * parameters**2 * 8 / GIB:.2f} GiB with workspaces)")
    advice.append("or raise influence.max_memory_gb")
    raise InputError(f"full-network influence needs an estimated {estimate / GIB:.2f} GiB of working "
                     f"memory (n={n}, {parameters} parameters), above influence.max_memory_gb="
                     f"{config.max_memory_gb}; " + ", ".join(advice))


def activation_width(network: nn.Module, features: torch.Tensor) -> int:
    """Floats of activation per row (the Linear layers' inputs and outputs; a Conv2d's at most
    ``channels × H × W`` of the input image), for memory estimates."""
    pixels = int(features[0, 0].numel()) if features.ndim == 4 else 0
    width = sum(m.in_features + m.out_features for m in network.modules() if isinstance(m, nn.Linear))
    width += sum((m.in_channels + m.out_channels) * pixels for m in network.modules()
                 if isinstance(m, nn.Conv2d))
    return width or int(features[0].numel()) + 1


def flat_to_state(network: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat parameter vector into the network's state-dict entries (same keys, shapes,
    dtypes and device as its parameters), in ``named_parameters`` order.

    Raises:
        InputError: the vector's length is not the parameter count.
    """
    named = list(network.named_parameters())
    count = sum(p.numel() for _, p in named)
    if flat.shape != (count,):
        raise InputError(f"flat parameter vector has shape {tuple(flat.shape)}; expected ({count},)")
    state, offset = {}, 0
    for name, param in named:
        chunk = flat[offset:offset + param.numel()]
        state[name] = chunk.reshape(param.shape).to(dtype=param.dtype, device=param.device).clone()
        offset += param.numel()
    return state


def objective_gradient(network: nn.Module, fn: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
    """Flat ``∇_θ fn(network)`` by autograd, in ``named_parameters`` order and the network's dtype.

    ``fn`` is called on a copy of the network whose parameters require grad (the caller's network
    is untouched); parameters ``fn`` does not use get a zero gradient.

    Raises:
        InputError: ``fn`` does not return a scalar.
        NonFiniteError: the value or gradient holds NaN/Inf.
    """
    clone = copy.deepcopy(network)
    params = [p.requires_grad_(True) for p in clone.parameters()]
    value = fn(clone)
    if value.numel() != 1:
        raise InputError(f"objective_gradient: the target must be a scalar; got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError("target gradient", "the target value")
    grads = torch.autograd.grad(value.reshape(()), params, allow_unused=True)
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for p, g in zip(params, grads, strict=True)])
    if not bool(torch.isfinite(flat).all()):
        raise NonFiniteError("target gradient", "the target gradient")
    return flat.detach()


def _sample_loss(network: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ of one sample (x: (D,), y: scalar), for ``vmap``."""
    logit = functional_call(network, params, (x.unsqueeze(0),)).reshape(())
    return F.binary_cross_entropy_with_logits(logit, y)


def _weighted_loss(network: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
                   w: torch.Tensor) -> torch.Tensor:
    """``Σ wᵢ ℓᵢ`` over a chunk of rows."""
    logits = functional_call(network, params, (x,)).reshape(-1)
    return w @ F.binary_cross_entropy_with_logits(logits, y, reduction="none")


def _load_forward_mode() -> None:
    """Load torch's forward-mode decompositions now, without the DeprecationWarning their
    one-time TorchScript compilation raises inside torch (nothing the caller can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated",
                                category=DeprecationWarning)
        from torch.autograd.forward_ad import _maybe_load_decompositions
        _maybe_load_decompositions()  # type: ignore[no-untyped-call]


def _dot_from_graph(graph: GaussNewtonGraph, labels: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``gᵢᵀ v`` for a chunk's rows from its kept graph: ``(σ(zᵢ) − yᵢ) · (J v)ᵢ``, per column of a
    (P, k) ``vector``."""
    residual = torch.sigmoid(graph.logits.detach()) - labels
    if vector.ndim == 1:
        return residual * graph.logit_jvp(vector)
    columns = [graph.logit_jvp(vector[:, j]) for j in range(vector.shape[1])]
    return residual.unsqueeze(1) * torch.stack(columns, dim=1)


def _finite(tensor: torch.Tensor, stage: str, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(stage, what)
    return tensor


class FullInfluence:
    """Influence machinery over all parameters of an MLP, on a float64 copy of the network.

    Args:
        network: the MLP (any ``nn.Module`` mapping (n, D) inputs to (n, 1) logits); it is
            deep-copied and cast to float64 on its own device; the caller's network is not changed.
        features: (n, D) training inputs. labels: (n,) 0/1 labels. weights: (n,) effective
            sample weights wᵢ of the objective.
        config: ``scope='full'`` settings (solver, damping, l2_reg, chunk_size, memory cap).

    Raises:
        InputError: shapes disagree, the solver cannot be used for this size, or the estimated
            memory is above ``config.max_memory_gb`` (checked before any heavy work).
        NonFiniteError: NaN/Inf in parameters, features, labels or weights.
    """

    def __init__(self, network: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor, config: InfluenceConfig) -> None:
        n = int(features.shape[0]) if features.ndim in (2, 4) else -1
        if n < 1 or labels.shape != (n,) or weights.shape != (n,):
            raise InputError(f"full influence needs features (n, D) or (n, C, H, W) with n >= 1, labels "
                             f"(n,) and weights (n,); got {tuple(features.shape)}, {tuple(labels.shape)}, "
                             f"{tuple(weights.shape)}")
        self.parameter_count = sum(p.numel() for p in network.parameters())
        profile = profile_network(network, features)
        self.solver, self.solver_reason = choose_solver(self.parameter_count, config, n, profile)
        if self.solver == "exact" and self.parameter_count > config.exact_max_parameters:
            raise InputError(f"influence.solver 'exact' builds a dense Hessian and allows at most "
                             f"influence.exact_max_parameters={config.exact_max_parameters} parameters; "
                             f"the model has {self.parameter_count}: use solver 'cg', 'ekfac' or 'auto'")
        self._width = activation_width(network, features)
        factor_entries = ekfac_factor_entries(network) if self.solver == "ekfac" else 0
        estimate = check_memory(n, self.parameter_count, config, self._width, factor_entries, profile)
        self.config = config
        self._plan_memory(config.max_memory_gb * GIB - estimate, n)
        self.n = n
        device = next(network.parameters()).device
        self.network = copy.deepcopy(network).to(dtype=torch.float64).requires_grad_(False)
        self.features = _finite(features.to(device=device, dtype=torch.float64), "load", "the features")
        self.labels = _finite(labels.to(device=device, dtype=torch.float64), "load", "the labels")
        self.weights = _finite(weights.to(device=device, dtype=torch.float64), "load", "the weights")
        self._shapes = [(name, p.shape) for name, p in self.network.named_parameters()]
        self._flat = _finite(self.flat_parameters_of(self.network), "load", "the model parameters")
        self.l2_reg = float(config.l2_reg)
        self.damping = (float(config.damping) if config.damping > 0
                        else DEFAULT_DAMPING_PER_WEIGHT * float(self.weights.abs().sum()))
        self._factor: HessianFactor | None = None
        self._ekfac: EKFACFactor | None = None
        self._sketch: RowSketch | None = None
        self._graphs: list[ChunkProduct] | None = None
        self._low_graphs: list[ChunkProduct] | None = None
        self._low_network: nn.Module | None = None
        self._krylov: tuple[float, KrylovBasis] | None = None
        self._lissa_scale: float | None = config.lissa_scale

    def _plan_memory(self, headroom: float, n: int) -> None:
        """Spend the memory cap's headroom beside the estimate on what saves the most passes:
        the low-precision product graphs of mixed-precision CG, then CG's recycled directions,
        then the float64 graphs (the verification products, the per-sample dots)."""
        mixed = self.solver == "cg" and self.config.cg_precision == "mixed"
        low = kept_graph_bytes(n, self._width, LOW_PRECISION.itemsize) if mixed else 0
        self.keep_low_graphs = mixed and low <= headroom
        """Whether mixed-precision CG keeps every chunk's float32 product graph across products."""
        headroom -= low if self.keep_low_graphs else 0
        vector_pair = 2 * self.parameter_count * 8
        self.recycle_capacity = int(min(self.config.cg_recycle_vectors, max(headroom, 0) // vector_pair)) \
            if self.solver == "cg" else 0
        """Search directions CG keeps for later solves at the same matrix."""
        headroom -= self.recycle_capacity * vector_pair
        self.keep_graphs = kept_graph_bytes(n, self._width) <= headroom
        """Whether every chunk's float64 product graph is kept across products (when it fits)."""

    # -- parameters ---------------------------------------------------------------------------

    @staticmethod
    def flat_parameters_of(network: nn.Module) -> torch.Tensor:
        """Concatenated parameters of ``network`` in ``named_parameters`` order."""
        return torch.cat([p.detach().reshape(-1) for p in network.parameters()])

    def flat_parameters(self) -> torch.Tensor:
        """The current parameters θ (flat, float64; a copy)."""
        return self._flat.clone()

    def set_parameters(self, flat: torch.Tensor) -> None:
        """Move to parameters ``flat`` (clears the cached Hessian factor and LiSSA scale)."""
        if flat.shape != self._flat.shape:
            raise InputError(f"parameter vector has shape {tuple(flat.shape)}; "
                             f"expected {tuple(self._flat.shape)}")
        self._flat = _finite(flat.to(self._flat).clone(), "parameters", "the model parameters")
        self._forget_curvature()

    def set_weights(self, weights: torch.Tensor) -> None:
        """Change the sample weights wᵢ of the objective (clears the cached Hessian factor)."""
        if weights.shape != self.weights.shape:
            raise InputError(f"weights have shape {tuple(weights.shape)}; expected "
                             f"{tuple(self.weights.shape)}")
        self.weights = _finite(weights.to(self.weights).clone(), "parameters", "the sample weights")
        self._forget_curvature()

    def _forget_curvature(self) -> None:
        """Drop everything built at the old parameters or weights."""
        self._factor = self._ekfac = self._sketch = self._graphs = self._low_graphs = self._krylov = None
        self._lissa_scale = self.config.lissa_scale

    def to_network(self) -> nn.Module:
        """A float64 copy of the network at the current parameters."""
        network = copy.deepcopy(self.network)
        loaded = network.load_state_dict(flat_to_state(network, self._flat), strict=False)
        buffers = {name for name, _ in network.named_buffers()}
        if loaded.unexpected_keys or not set(loaded.missing_keys) <= buffers:  # buffers keep their values
            raise ValueError(f"parameter vector does not match the network: {loaded}")
        return network

    def _unflatten(self, flat: torch.Tensor) -> Params:
        """Views of ``flat`` (P,) or (b, P) as a parameter dict (leading batch dim kept)."""
        lead = flat.shape[:-1]
        params, offset = {}, 0
        for name, shape in self._shapes:
            size = math.prod(shape)
            params[name] = flat[..., offset:offset + size].reshape(*lead, *shape)
            offset += size
        return params

    def _flatten(self, params: Params, batch: int | None = None) -> torch.Tensor:
        lead = () if batch is None else (batch,)
        return torch.cat([params[name].reshape(*lead, -1) for name, _ in self._shapes], dim=-1)

    def _chunks(self) -> list[slice]:
        size = self.config.chunk_size
        return [slice(s, min(s + size, self.n)) for s in range(0, self.n, size)]

    # -- gradients ----------------------------------------------------------------------------

    def objective(self, flat: torch.Tensor | None = None) -> float:
        """``L(θ; w)`` at ``flat`` (default: the current parameters), without damping."""
        theta = self._flat if flat is None else flat
        params = self._unflatten(theta)
        total = sum(float(_weighted_loss(self.network, params, self.features[r], self.labels[r],
                                         self.weights[r])) for r in self._chunks())
        return total + 0.5 * self.l2_reg * float(theta @ theta)

    def _weighted_grad(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``Σ cᵢ gᵢ`` by one reverse pass per chunk."""
        total = torch.zeros_like(self._flat)
        with torch.enable_grad():
            for rows in self._chunks():
                theta = self._flat.detach().requires_grad_(True)
                loss = _weighted_loss(self.network, self._unflatten(theta), self.features[rows],
                                      self.labels[rows], coefficients[rows])
                total = total + torch.autograd.grad(loss, theta)[0]
        return total

    def per_sample_gradients(self, rows: slice) -> torch.Tensor:
        """(rows, P) per-sample gradients gᵢ of the unregularized loss, by ``vmap(grad)``.

        Materializes rows × P entries; the influence paths never call it (they use
        :meth:`per_sample_dot` and :meth:`weighted_gradient_sums`), it is kept for inspection.
        """
        params = self._unflatten(self._flat)
        per_sample = vmap(grad(lambda p, x, y: _sample_loss(self.network, p, x, y)), in_dims=(None, 0, 0))
        grads = per_sample(params, self.features[rows], self.labels[rows])
        return self._flatten(grads, batch=int(self.labels[rows].shape[0]))

    def _row_losses(self, rows: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        """``θ ↦ (ℓᵢ(θ))_{i∈rows}``: the chunk's unweighted per-row losses as a function of the
        flat parameters (one batched forward pass)."""
        features, labels = self.features[rows], self.labels[rows]

        def losses(theta: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.network, self._unflatten(theta), (features,)).reshape(-1)
            return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return losses

    def per_sample_dot(self, vector: torch.Tensor, stage: str = "influence") -> torch.Tensor:
        """``gᵢᵀ v`` for every training row: (n,) for v of shape (P,), (n, k) for (P, k).

        By the chain rule ``gᵢᵀ v = (σ(zᵢ) − yᵢ) · ∇zᵢᵀ v``, and ``∇zᵢᵀ v`` for the whole chunk is
        one backward pass through the kept Gauss-Newton graphs where there are any (CG made
        them), else one forward-mode product (``torch.func.jvp``) of its logits: about the cost
        of two forward passes either way, and no per-sample gradient is ever formed. The k
        columns of a (P, k) block are batched with ``vmap`` there. (The loss stays outside the
        forward-mode product: under ``jvp`` torch decomposes it through code that imports
        ``torch._dynamo``, 1.5 s.)

        Raises:
            NonFiniteError: NaN/Inf in the products.
        """
        vector = vector.to(self._flat)
        kept = self._kept_gauss_newton_graphs()
        if kept is not None:
            return _finite(torch.cat([_dot_from_graph(graph, self.labels[rows], vector)
                                      for rows, graph in zip(self._chunks(), kept, strict=True)]),
                           stage, "per-sample gradient products")
        theta = self._flat.detach()
        parts = []
        _load_forward_mode()
        for rows in self._chunks():
            features = self.features[rows]

            def logits_of(flat: torch.Tensor, features: torch.Tensor = features) -> torch.Tensor:
                logits: torch.Tensor = functional_call(self.network, self._unflatten(flat), (features,))
                return logits.reshape(-1)

            def directional(v: torch.Tensor, logits_of: Callable[[torch.Tensor], torch.Tensor] = logits_of,
                            ) -> torch.Tensor:
                tangent: torch.Tensor = jvp(logits_of, (theta,), (v,))[1]
                return tangent
            with torch.no_grad():
                residual = torch.sigmoid(logits_of(theta)) - self.labels[rows]
            if vector.ndim == 1:
                parts.append(residual * directional(vector))
            else:
                parts.append(residual.unsqueeze(1) * vmap(directional, in_dims=1, out_dims=1)(vector))
        return _finite(torch.cat(parts), stage, "per-sample gradient products")

    def weighted_gradient_sums(self, eps: torch.Tensor, stage: str = "influence") -> torch.Tensor:
        """``Σᵢ εᵢⱼ gᵢ`` for every column j of ``eps`` (n, k): (P, k), per chunk one forward pass
        and k reverse passes through its graph, without forming per-sample gradients. (Plain
        autograd, not ``torch.func.vjp``: its first use imports ``torch._dynamo``, 1.5 s.)"""
        eps = eps.to(self._flat)
        columns = int(eps.shape[1])
        total = self._flat.new_zeros(self._flat.shape[0], columns)
        with torch.enable_grad():
            for rows in self._chunks():
                theta = self._flat.detach().requires_grad_(True)
                losses = self._row_losses(rows)(theta)
                for j in range(columns):
                    total[:, j] += vector_jacobian_product(losses, theta, eps[rows, j],
                                                           retain_graph=j + 1 < columns)
        return _finite(total, stage, "the weighted gradient sums")

    def weighted_gradient_sum(self, eps: torch.Tensor, stage: str = "influence") -> torch.Tensor:
        """``Σᵢ εᵢ gᵢ`` (flat) without forming per-sample gradients."""
        total = self._weighted_grad(eps.to(self._flat).reshape(-1))
        return _finite(total, stage, "the weighted gradient sum")

    def gradient(self, stage: str = "gradient") -> torch.Tensor:
        """``∇L(θ; w) = Σ wᵢ gᵢ + λθ`` (flat)."""
        total = self._weighted_grad(self.weights) + self.l2_reg * self._flat
        return _finite(total, stage, "the training-objective gradient")

    # -- curvature ----------------------------------------------------------------------------

    def _chunk_gradient_graph(self, rows: slice | torch.Tensor, scale: float = 1.0,
                              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """A leaf copy θ of the parameters and ``scale · ∇_θ Σ_{rows} wᵢℓᵢ`` with its graph kept,
        so Hessian-vector products are one more backward pass (reverse-over-reverse: on small
        MLPs it measured 2-10× faster than ``torch.func.jvp`` of ``grad``); in ``dtype``."""
        theta = self._flat.detach().to(dtype).requires_grad_(True)
        loss = _weighted_loss(self._network_in(dtype), self._unflatten(theta), self.features[rows].to(dtype),
                              self.labels[rows].to(dtype), (self.weights[rows] * scale).to(dtype))
        (gradient,) = torch.autograd.grad(loss, theta, create_graph=True)
        return theta, gradient

    def _network_in(self, dtype: torch.dtype) -> nn.Module:
        """The float64 network, or a copy in ``dtype`` (its buffers too) made on first use."""
        if dtype == torch.float64:
            return self.network
        if self._low_network is None:
            self._low_network = copy.deepcopy(self.network).to(dtype)
        return self._low_network

    def _chunk_product(self, rows: slice | torch.Tensor, scale: float = 1.0, keep: bool = False,
                       dtype: torch.dtype = torch.float64) -> ChunkProduct:
        """The rows' curvature-vector product at the current parameters (:mod:`products`), in
        ``dtype`` (vectors in and out too): for ``gauss_newton``, ``Jᵀ diag(scale · wᵢ pᵢ(1−pᵢ)) J v``
        with J the Jacobian of the chunk's logits; otherwise the exact Hessian's. With ``keep``
        it serves any number of products."""
        with torch.enable_grad():
            if self.config.curvature != "gauss_newton":
                theta, gradient = self._chunk_gradient_graph(rows, scale, dtype)
                return hessian_product(theta, gradient, keep)
            theta = self._flat.detach().to(dtype).requires_grad_(True)
            logits = functional_call(self._network_in(dtype), self._unflatten(theta),
                                     (self.features[rows].to(dtype),)).reshape(-1)
            probability = torch.sigmoid(logits).detach()
            coefficients = (self.weights[rows] * scale).to(dtype) * probability * (1 - probability)
            return GaussNewtonGraph(theta, logits, coefficients, keep)

    def _chunk_hvp(self, rows: slice | torch.Tensor, vector: torch.Tensor, scale: float = 1.0,
                   ) -> torch.Tensor:
        return self._chunk_product(rows, scale)(vector)

    def _products(self) -> Iterator[ChunkProduct]:
        """Every chunk's float64 product at the current parameters and weights: the kept graphs
        (built on first use) when :attr:`keep_graphs`, else each chunk's built afresh for one product."""
        if not self.keep_graphs:
            return (self._chunk_product(rows) for rows in self._chunks())
        if self._graphs is None:
            self._graphs = [self._chunk_product(rows, keep=True) for rows in self._chunks()]
        return iter(self._graphs)

    def _low_products(self) -> Iterator[ChunkProduct]:
        """:meth:`_products` in :data:`LOW_PRECISION`, kept when :attr:`keep_low_graphs`."""
        if not self.keep_low_graphs:
            return (self._chunk_product(rows, dtype=LOW_PRECISION) for rows in self._chunks())
        if self._low_graphs is None:
            self._low_graphs = [self._chunk_product(rows, keep=True, dtype=LOW_PRECISION)
                                for rows in self._chunks()]
        return iter(self._low_graphs)

    def _kept_gauss_newton_graphs(self) -> list[GaussNewtonGraph] | None:
        """The kept graphs at the current parameters when they are Gauss-Newton ones."""
        graphs = self._graphs or []
        kept = [graph for graph in graphs if isinstance(graph, GaussNewtonGraph)]
        return kept if graphs and len(kept) == len(graphs) else None

    def _logit_jacobian(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """The rows' per-sample logit gradients ∇zᵢ (rows × P): from one backward pass for a
        network of Linear layers (:mod:`per_sample`), else by ``vmap``."""
        def logit(p: Params, x: torch.Tensor) -> torch.Tensor:
            value: torch.Tensor = functional_call(self.network, p, (x.unsqueeze(0),)).reshape(())
            return value

        features = self.features[rows]
        params = self._unflatten(self._flat)
        per_sample = linear_logit_gradients(self.network, params, features)
        if per_sample is None:
            per_sample = vmap(grad(logit), in_dims=(None, 0))(params, features)
        return self._flatten(per_sample, batch=int(features.shape[0]))

    def _curvature(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """The rows' Gauss-Newton weights ``wᵢ pᵢ(1−pᵢ)``."""
        with torch.no_grad():
            logits = functional_call(self.network, self._unflatten(self._flat), (self.features[rows],))
            probability = torch.sigmoid(logits.reshape(-1))
        return self.weights[rows] * probability * (1 - probability)

    def _dense_ggn(self) -> torch.Tensor:
        """``Σ wᵢ pᵢ(1−pᵢ) ∇zᵢ∇zᵢᵀ`` from per-sample logit gradients (vmap), chunk by chunk."""
        total = torch.zeros(self.parameter_count, self.parameter_count, dtype=self._flat.dtype,
                            device=self._flat.device)
        for rows in self._chunks():
            jacobian = self._logit_jacobian(rows)
            total += jacobian.T @ (self._curvature(rows).unsqueeze(1) * jacobian)
        return total

    def _row_sketch(self, stage: str) -> RowSketch | None:
        """CG's preconditioner at the current parameters, weights and damping (built on first
        use; :mod:`workers.engine.influence.sketch`), or None when it is switched off or too small."""
        shift = self.l2_reg + self.damping
        if self._sketch is not None:
            self._sketch = self._sketch.with_shift(shift, stage)
            return self._sketch
        count = sketch_row_count(self.config.cg_preconditioner_rows, self.n, self.parameter_count)
        drawn = draw_sketch_rows(torch.cat([self._curvature(rows) for rows in self._chunks()]), count) \
            if count else None
        if drawn is None:
            return None
        started = time.perf_counter()
        index = torch.from_numpy(drawn[0]).to(self.features.device)
        scale = torch.from_numpy(drawn[1]).to(self._flat)
        size = self.config.chunk_size
        factor = torch.cat([self._logit_jacobian(index[start:start + size])
                            for start in range(0, int(index.shape[0]), size)])
        low = self.config.cg_precision == "mixed"
        self._sketch = RowSketch.build(scale.unsqueeze(1) * factor, shift, stage, started,
                                       LOW_PRECISION if low else torch.float64)
        return self._sketch

    def hvp(self, vector: torch.Tensor, stage: str = "hvp") -> torch.Tensor:
        """``(H + δI) v`` with H the Hessian of ``L(θ; w)`` (sum form, with λI).

        Raises:
            NonFiniteError: NaN/Inf in the product.
        """
        vector = vector.to(self._flat)
        total = (self.l2_reg + self.damping) * vector
        for product in self._products():
            total = total + product(vector)
        return _finite(total, stage, "a Hessian-vector product")

    def low_precision_hvp(self, vector: torch.Tensor, stage: str = "hvp") -> torch.Tensor:
        """``(H + δI) v`` as :meth:`hvp`, the curvature products in :data:`LOW_PRECISION` (each
        chunk's result summed and shifted in float64): what mixed-precision CG iterates on.

        Raises:
            NonFiniteError: NaN/Inf in the product (float32 overflow included).
        """
        vector = vector.to(self._flat)
        low = vector.to(LOW_PRECISION)
        total = (self.l2_reg + self.damping) * vector
        for product in self._low_products():
            total = total + product(low).to(total)
        return _finite(total, stage, "a float32 Hessian-vector product")

    def _sampled_hvp(self, generator: torch.Generator) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """``(j, v) ↦`` unbiased mini-batch estimate of ``(H + δI) v`` (full HVP when the batch
        covers the data): ``(n/b) Σ_{i∈B} wᵢ∇²ℓᵢ v + (λ + δ) v``, B drawn without replacement."""
        batch = self.config.lissa_batch_size
        if batch >= self.n:
            return lambda _step, v: self.hvp(v, "lissa")

        def sampled(_step: int, v: torch.Tensor) -> torch.Tensor:
            index = torch.randperm(self.n, generator=generator)[:batch].to(self.features.device)
            with torch.enable_grad():
                product = self._chunk_hvp(index, v, self.n / batch)
            return _finite(product + (self.l2_reg + self.damping) * v, "lissa", "a Hessian-vector product")
        return sampled

    def dense_hessian(self, stage: str = "hessian") -> torch.Tensor:
        """The symmetrized dense ``H + δI`` (P×P): per chunk of rows, one gradient graph and
        batched backward passes against blocks of basis vectors (``is_grads_batched``).

        Raises:
            InputError: more than ``exact_max_parameters`` parameters.
            NonFiniteError: NaN/Inf in the Hessian.
        """
        count = self.parameter_count
        if count > self.config.exact_max_parameters:
            raise InputError(f"a dense Hessian of {count} parameters is above "
                             f"influence.exact_max_parameters={self.config.exact_max_parameters}")
        matrix = torch.diag(torch.full_like(self._flat, self.l2_reg + self.damping))
        if self.config.curvature == "gauss_newton":
            return _finite(matrix + self._dense_ggn(), stage, "the Gauss-Newton matrix")
        with torch.enable_grad():
            for rows in self._chunks():
                per_column = (rows.stop - rows.start) * self._width * 8 * 6 + count * 8 * 2
                block = max(1, min(count, HESSIAN_BLOCK_BYTES // per_column))
                theta, gradient = self._chunk_gradient_graph(rows)
                for start in range(0, count, block):
                    stop = min(start + block, count)
                    basis = torch.zeros(stop - start, count, dtype=self._flat.dtype, device=self._flat.device)
                    basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                    (columns,) = torch.autograd.grad(gradient, theta, grad_outputs=basis,
                                                     retain_graph=True, is_grads_batched=True)
                    matrix[start:stop] += columns
        matrix = _finite(matrix, stage, "the Hessian")
        return 0.5 * (matrix + matrix.T)

    # -- solves -------------------------------------------------------------------------------

    def solve(self, vector: torch.Tensor, stage: str, check_residual: bool = True,
              ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(H + δI)⁻¹ v`` by the configured solver.

        Returns:
            The solution and diagnostics: solver, iterations, relative_residual
            ``‖(H + δI)x − v‖/‖v‖`` (one extra HVP over the training set; None when
            ``check_residual`` is false), damping, plus solver-specific entries.

        Raises:
            IllConditionedError: not positive definite after damping, CG not converging, LiSSA
                diverging (each message says which knob to raise).
            NonFiniteError: NaN/Inf in the right-hand side, a product or the solution.
        """
        rhs = _finite(vector.to(self._flat).reshape(-1), stage, "the right-hand side")
        info: dict[str, Any] = {"solver": self.solver, "damping": self.damping}
        if self.solver == "exact":
            if self._factor is None:
                self._factor = factorize(self.dense_hessian(stage), stage)
            solution = self._factor.solve(rhs, stage)
            info.update(iterations=0, **self._factor.describe())
        elif self.solver == "ekfac":
            solution = self._ekfac_factor().solve(rhs, self.l2_reg + self.damping)
            info.update(iterations=0, **self._ekfac_factor().describe())
        elif self.solver == "cg":
            solution, extra = self._conjugate_gradient(rhs, stage)
            info.update(extra)
        else:
            if self._lissa_scale is None:
                top = top_eigenvalue(lambda v: self.hvp(v, stage), self.parameter_count, self._flat,
                                     LISSA_SEED, stage)
                self._lissa_scale = LISSA_SCALE_MARGIN * abs(top)
            generator = torch.Generator(device="cpu").manual_seed(LISSA_SEED)
            solution, extra = lissa(self._sampled_hvp(generator), rhs, self._lissa_scale,
                                    self.config.lissa_depth, stage)
            info.update(extra)
        solution = _finite(solution, stage, "the inverse-Hessian-vector product")
        if "relative_residual" not in info:  # mixed-precision CG measured it already
            info["relative_residual"] = self.relative_residual(solution, rhs, stage) \
                if check_residual else None
        return solution, info

    def _recycled(self) -> KrylovBasis | None:
        """CG's recycled directions at the current parameters, weights and damping (new ones when
        the damping moved: the polish's shifts), or None when recycling is off."""
        if not self.recycle_capacity:
            return None
        shift = self.l2_reg + self.damping
        if self._krylov is None or self._krylov[0] != shift:
            self._krylov = (shift, KrylovBasis(self.parameter_count, self.recycle_capacity, self._flat))
        return self._krylov[1]

    def _conjugate_gradient(self, rhs: torch.Tensor, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """Preconditioned, recycled CG in the configured precision, with its diagnostics. Mixed
        precision (iterative refinement): CG on float32 products, then the float64 residual
        ``b − (H + δI)x``; while that is above ``cg_tolerance`` a correction is solved for it the same
        way, and after :data:`MIXED_REFINEMENTS` of them the rest in float64, so what is returned
        always meets the tolerance in float64 (its ``relative_residual``)."""
        cfg = self.config
        sketch = self._row_sketch(stage)
        precondition = None if sketch is None else sketch.apply
        info: dict[str, Any] = {"precision": cfg.cg_precision,
                                "preconditioner": None if sketch is None else sketch.describe()}
        if cfg.cg_precision == "float64":
            solution, extra = conjugate_gradient(lambda v: self.hvp(v, stage), rhs, cfg.cg_tolerance,
                                                 cfg.cg_max_iterations, stage, precondition, self._recycled())
            return solution, {**extra, **info}
        return self._mixed_precision_cg(rhs, stage, precondition, info)

    def _mixed_precision_cg(self, rhs: torch.Tensor, stage: str, precondition: MatVec | None,
                            info: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Iterative refinement of float32-product CG runs against float64 residuals (see
        :meth:`_conjugate_gradient`)."""
        cfg = self.config
        rhs_norm = float(rhs.norm())
        solution, residual, relative, low_products = torch.zeros_like(rhs), rhs, 1.0, 0
        basis = self._recycled()
        info["recycled"] = None if basis is None else basis.count
        if rhs_norm == 0.0:
            return solution, {"iterations": 0, "relative_residual": 0.0, "float64_products": 0, **info}
        for refinement in range(1, MIXED_REFINEMENTS + 2):
            try:
                correction, extra = conjugate_gradient(
                    lambda v: self.low_precision_hvp(v, stage), residual,
                    max(cfg.cg_tolerance / relative, LOW_PRECISION_REDUCTION),
                    max(1, cfg.cg_max_iterations - low_products), stage, precondition,
                    basis if refinement == 1 else None)  # a correction's residual is rounding-sized
            except IllConditionedError:
                if refinement == 1:
                    raise
                break
            solution, low_products = solution + correction, low_products + extra["iterations"]
            residual = rhs - self.hvp(solution, stage)
            relative = float(residual.norm()) / rhs_norm
            if relative <= cfg.cg_tolerance:
                return solution, {"iterations": low_products, "relative_residual": relative,
                                  "float64_products": refinement, **info}
        correction, extra = conjugate_gradient(lambda v: self.hvp(v, stage), residual,
                                               cfg.cg_tolerance / relative, cfg.cg_max_iterations, stage,
                                               precondition)
        info["precision"] = "mixed, finished in float64 (float32 products could not reach cg_tolerance)"
        return solution + correction, {"iterations": low_products + extra["iterations"], **info}

    def relative_residual(self, solution: torch.Tensor, rhs: torch.Tensor, stage: str) -> float | None:
        """``‖(H + δI)x − v‖/‖v‖`` (one product over the training set); None for EK-FAC, whose
        solve is exact for its own approximate matrix: the residual against the exact
        Gauss-Newton product would measure the approximation, at one pass over the data per solve."""
        if self.solver == "ekfac":
            return None
        rhs_norm = float(rhs.norm())
        residual = float((self.hvp(solution, stage) - rhs).norm())
        return residual / rhs_norm if rhs_norm > 0 else 0.0

    def _ekfac_factor(self) -> EKFACFactor:
        """The EK-FAC factors at the current parameters and weights (built on first use)."""
        if self._ekfac is None:
            def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for rows in self._chunks():
                    yield self.features[rows], self.weights[rows]
            self._ekfac = build_ekfac(self.network, self._unflatten(self._flat), chunks)
        return self._ekfac

    def polish(self, tolerance: float | None = None, max_steps: int | None = None,
               stage: str = "polish") -> dict[str, Any]:
        """Minimize ``L(θ; w)`` from the current parameters by damped Newton with backtracking.

        Where ``H + δI`` is not positive definite (a network away from its optimum) the step's
        damping is raised tenfold at a time from ``DEFAULT_DAMPING_PER_WEIGHT · max(1, Σ|wᵢ|)``
        (Levenberg-Marquardt), so the step bends toward gradient descent. Stops when
        ``‖∇L‖ ≤ tolerance · max(1, Σ|wᵢ|)`` (defaults: ``config.polish_tolerance``,
        ``config.polish_max_steps``) and leaves the parameters at the last accepted step.

        Returns:
            ``{"newton_steps", "gradient_norm_before", "gradient_norm_after", "converged"}``.
        """
        tol = self.config.polish_tolerance if tolerance is None else tolerance
        limit = self.config.polish_max_steps if max_steps is None else max_steps
        target = tol * max(1.0, float(self.weights.abs().sum()))
        gradient = self.gradient(stage)
        before, steps = float(gradient.norm()), 0
        while float(gradient.norm()) > target and steps < limit:
            if not self._line_search(gradient, self._newton_direction(gradient, stage), stage):
                break
            gradient = self.gradient(stage)
            steps += 1
        after = float(gradient.norm())
        return {"newton_steps": steps, "gradient_norm_before": before, "gradient_norm_after": after,
                "converged": after <= target}

    def _newton_direction(self, gradient: torch.Tensor, stage: str) -> torch.Tensor:
        """``(H + δI + μI)⁻¹ ∇L`` with the smallest μ ∈ {0, μ₀, 10μ₀, ...} that the solver accepts."""
        base, shift = self.damping, 0.0
        first = DEFAULT_DAMPING_PER_WEIGHT * max(1.0, float(self.weights.abs().sum()))
        try:
            for _ in range(POLISH_MAX_SHIFTS):
                try:
                    return self.solve(gradient, stage)[0]
                except IllConditionedError:
                    shift = first if shift == 0.0 else 10.0 * shift
                    self.damping, self._factor = base + shift, None
            raise IllConditionedError(f"stage '{stage}': no positive-definite Newton system up to an "
                                      f"extra damping of {shift:.1e}; the parameters may hold NaN-free "
                                      "but extreme values: retrain the model or raise influence.l2_reg")
        finally:
            if shift:
                self.damping, self._factor = base, None

    def _line_search(self, gradient: torch.Tensor, direction: torch.Tensor, stage: str) -> bool:
        """Backtrack along −direction; accept sufficient decrease, or (below rounding of the
        objective) a step that shrinks the gradient. Returns whether a step was taken."""
        start, current = self._flat.clone(), self.objective()
        slope = float(gradient @ direction)
        rounding = 64 * torch.finfo(torch.float64).eps * max(1.0, abs(current))
        step = 1.0
        while step > 1e-10:
            candidate = start - step * direction
            value = self.objective(candidate)
            if math.isfinite(value) and value <= current - 1e-4 * step * slope:
                self.set_parameters(candidate)
                return True
            if math.isfinite(value) and value <= current + rounding:
                self.set_parameters(candidate)
                if float(self.gradient(stage).norm()) < float(gradient.norm()):
                    return True
                self.set_parameters(start)
            step *= 0.5
        return False
