"""The ``resnet`` family as torch modules whose state-dict keys are torchvision's.

The network is one named ``Sequential`` (``conv1, bn1, relu, [maxpool,] layer1 … layer4, avgpool,
flatten, fc``) so that the engine can slice it like the other families (the extractor is every
module before ``fc``); the residual blocks follow torchvision's ``BasicBlock`` exactly (attribute
names, ``downsample`` as ``Sequential(conv1x1, BatchNorm2d)``, bias-free convolutions). torchvision
itself is not a dependency.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from workers.engine.io.resnet import STAGES, ResNetLayout

__all__ = ["BasicBlock", "build_resnet", "freeze_batch_norm", "init_resnet"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, torchvision's BasicBlock."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.downsample = nn.Sequential(shortcut, nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual block's output."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + shortcut)


def _stage(count: int, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


def build_resnet(layout: ResNetLayout) -> nn.Sequential:
    """The network of ``layout`` (float32, default torch initialization)."""
    width = layout.base_width
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    if layout.small_input:
        modules["conv1"] = nn.Conv2d(layout.input_shape[0], width, 3, stride=1, padding=1, bias=False)
    else:
        modules["conv1"] = nn.Conv2d(layout.input_shape[0], width, 7, stride=2, padding=3, bias=False)
    modules["bn1"] = nn.BatchNorm2d(width)
    modules["relu"] = nn.ReLU()
    if not layout.small_input:
        modules["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_channels = width
    for index, (count, out) in enumerate(zip(layout.blocks, layout.stage_widths, strict=True)):
        modules[STAGES[index]] = _stage(count, in_channels, out, 1 if index == 0 else 2)
        in_channels = out
    modules["avgpool"] = nn.AdaptiveAvgPool2d((1, 1))
    modules["flatten"] = nn.Flatten()
    modules["fc"] = nn.Linear(layout.feature_width, 1)
    return nn.Sequential(modules)


def init_resnet(module: nn.Module, generator: torch.Generator) -> None:
    """torchvision's initialization drawn from ``generator``: He-normal (fan-out) convolutions,
    BatchNorm at weight 1, bias 0 and fresh running statistics, ``fc`` uniform in ±1/√fan_in."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                layer.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
            elif isinstance(layer, nn.BatchNorm2d):
                layer.reset_parameters()
            elif isinstance(layer, nn.Linear):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Put every BatchNorm of ``module`` in eval mode (running statistics used, never updated);
    returns ``module``. A correction trains with this, so it never changes the statistics."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
    return module
