"""Build and train the allow-listed MLP (or cnn) from scratch (examples and retraining baselines).

Training is deterministic on CPU for a fixed seed: initialization and mini-batch shuffling draw
from a private ``torch.Generator``, so the global RNG state is neither used nor changed. The loss
is the (optionally sample-weighted) binary cross-entropy on the logit, minimized with Adam in
float32.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from workers.engine.io.architecture import ArchSpec
from workers.engine.models.resnet import build_resnet, freeze_batch_norm, init_resnet

__all__ = ["build_model", "correction_mode", "train_mlp"]


ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


POOL_MODULES: dict[str, type[nn.MaxPool2d] | type[nn.AvgPool2d]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _conv_layers(arch: ArchSpec) -> list[nn.Module]:
    """A cnn's ``Conv2d, Act, [Pool]`` blocks and the ``Flatten`` (nothing for mlp and linear_head;
    a resnet is built by :func:`build_resnet`)."""
    if arch.image_shape is None:
        return []
    layers: list[nn.Module] = []
    channels = arch.image_shape[0]
    for block in arch.blocks:
        layers += [nn.Conv2d(channels, block.out_channels, block.kernel_size, padding=block.padding),
                   ACTIVATION_MODULES[arch.activation]()]
        if block.pool != "none":
            layers.append(POOL_MODULES[block.pool](block.pool_size))
        channels = block.out_channels
    return [*layers, nn.Flatten()]


def build_model(arch: ArchSpec) -> nn.Sequential:
    """``Sequential(Linear(D, h1), Act(), [Dropout(p),] ..., Linear(hk, 1))`` for ``arch`` (float32);
    a cnn's convolution blocks and ``Flatten`` come first; a resnet is torchvision's network as a
    named ``Sequential`` (:mod:`workers.engine.models.resnet`)."""
    if arch.resnet is not None:
        return build_resnet(arch.resnet)
    widths = [arch.flat_features, *arch.hidden]
    layers: list[nn.Module] = _conv_layers(arch)
    for width_in, width_out in itertools.pairwise(widths):
        layers += [nn.Linear(width_in, width_out), ACTIVATION_MODULES[arch.activation]()]
        if arch.dropout > 0:
            layers.append(nn.Dropout(arch.dropout))
    layers.append(nn.Linear(widths[-1], 1))
    return nn.Sequential(*layers)


def _init_linear(layer: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default Linear (and Conv2d) initialization, drawn from ``generator``: weight and
    bias uniform in ±1/√fan_in (kaiming_uniform with a=√5 gives the same weight bound)."""
    assert layer.bias is not None
    bound = 1.0 / math.sqrt(layer.weight[0].numel())
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


def _seeded_model(arch: ArchSpec, generator: torch.Generator) -> nn.Sequential:
    """A freshly built model whose parameters come only from ``generator``."""
    model = build_model(arch)
    if arch.resnet is not None:
        init_resnet(model, generator)
        return model
    for module in model:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            _init_linear(module, generator)
    return model


def correction_mode(network: nn.Module) -> nn.Module:
    """``network`` set up for a correction's gradient steps: training mode (dropout active) with
    every BatchNorm frozen in eval mode, so running statistics are used and never updated."""
    network.train()
    return freeze_batch_norm(network)


def _as_tensors(
    X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 tensors of the features, labels and (normalized to mean 1) sample weights."""
    if X.ndim < 2 or y.shape != (X.shape[0],):
        raise ValueError(f"train_mlp: X must be (n, D) or (n, C, H, W) and y (n,); got {X.shape} and "
                         f"{y.shape}")
    weights = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if weights.shape != y.shape or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("train_mlp: sample_weight must be finite, >= 0 and have one entry per row")
    if weights.sum() <= 0:
        raise ValueError("train_mlp: sample_weight sums to zero; nothing to train on")
    weights = weights / weights.mean()
    return (
        torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32),
        torch.as_tensor(np.ascontiguousarray(y), dtype=torch.float32),
        torch.as_tensor(weights, dtype=torch.float32),
    )


def _run_epoch(
    model: nn.Sequential,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """One pass over a seeded permutation of the rows, one Adam step per mini-batch."""
    features, labels, weights = data
    order = torch.randperm(labels.shape[0], generator=generator)
    for start in range(0, labels.shape[0], batch_size):
        index = order[start:start + batch_size]
        batch_w = weights[index]
        logits = model(features[index]).squeeze(1)
        losses = nn.functional.binary_cross_entropy_with_logits(logits, labels[index], reduction="none")
        # Weighted mean of the batch: mean(w_i * l_i) / mean(w_i); a zero-weight batch is skipped.
        total_w = batch_w.sum()
        if total_w <= 0:
            continue
        loss = (batch_w * losses).sum() / total_w
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()


def train_mlp(
    arch: ArchSpec,
    X: np.ndarray,
    y: np.ndarray,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    sample_weight: np.ndarray | None = None,
) -> nn.Sequential:
    """Train ``build_model(arch)`` from a seeded initialization and return it in eval mode.

    Args:
        arch: the architecture (an MLP or a cnn); ``arch.input_shape`` must equal ``X.shape[1:]``.
        X: (n, D) features, or (n, C, H, W) images for a cnn; y: (n,) 0/1 labels.
        seed: seeds initialization and shuffling (same seed, same data -> same weights on CPU).
        epochs, batch_size, lr, weight_decay: Adam mini-batch training settings.
        sample_weight: optional (n,) non-negative weights; the loss of a batch is
            ``mean(w_i * l_i) / mean(w_i)``.

    Raises:
        ValueError: shapes or settings that cannot be trained on.
    """
    if tuple(X.shape[1:]) != arch.input_shape:
        raise ValueError(f"train_mlp: X has shape {X.shape}; the architecture needs rows of shape "
                         f"{list(arch.input_shape)}")
    if epochs < 0 or batch_size < 1 or not lr > 0 or weight_decay < 0:
        raise ValueError("train_mlp: need epochs >= 0, batch_size >= 1, lr > 0, weight_decay >= 0")
    data = _as_tensors(X, y, sample_weight)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    model = _seeded_model(arch, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        _run_epoch(model, optimizer, data, batch_size, generator)
    return model.eval()
