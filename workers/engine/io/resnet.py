"""The ``resnet`` family's layout: torchvision's BasicBlock ResNet-18/34, described without torch.

``{"type": "resnet", "depth": 18, "input_shape": [3, 32, 32], "small_input": false,
"base_width": 64}`` is the network of ``torchvision.models.resnet18(num_classes=1)``: the same
modules, the same state-dict keys (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ..., ``fc.weight``, ``fc.bias``) and the
same shapes. ``small_input: true`` swaps the 7×7 stride-2 stem and its max-pool for a 3×3 stride-1
stem and no pool (the CIFAR-style variant; the keys stay the same, ``conv1.weight`` is 3×3).
``base_width`` (default 64, torchvision's) scales every stage's channels (``64·2^i`` becomes
``base_width·2^i``): a narrower network with the same keys, for small data. BatchNorm always runs
in eval mode (its running statistics are part of the model and never updated by a correction).

Torch-free: the HTTP front end validates uploads with it; :mod:`workers.engine.models.resnet`
builds the module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workers.engine.errors import InputError

__all__ = ["RESNET_DEPTHS", "ResNetLayout", "parse_resnet", "scalar_count"]

RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
"""Residual blocks per stage, as torchvision's ``resnet18``/``resnet34``."""
STAGES = ("layer1", "layer2", "layer3", "layer4")
NORM_STATISTICS = ("running_mean", "running_var")
COUNTER = "num_batches_tracked"
MIN_SIDE = 8
MAX_SIDE = 512
MAX_CHANNELS = 64
MAX_BASE_WIDTH = 128
FIELDS = {"type", "depth", "input_shape", "small_input", "base_width"}


@dataclass(frozen=True)
class ResNetLayout:
    """A BasicBlock ResNet with one output logit."""

    depth: int
    input_shape: tuple[int, int, int]
    small_input: bool = False
    base_width: int = 64

    @property
    def blocks(self) -> tuple[int, int, int, int]:
        """Residual blocks in each of the four stages."""
        return RESNET_DEPTHS[self.depth]

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Output channels of each of the four stages."""
        return tuple(self.base_width * 2**i for i in range(4))

    @property
    def feature_width(self) -> int:
        """Width of the pooled features the head ``fc`` sees."""
        return self.stage_widths[-1]

    @property
    def stem_kernel(self) -> int:
        """Side of ``conv1``'s kernel: 7 (ImageNet stem) or 3 (small images)."""
        return 3 if self.small_input else 7

    @property
    def module_names(self) -> tuple[str, ...]:
        """The network's top-level modules in order (the engine builds them as one named
        ``Sequential``; ``flatten`` and the pools hold no tensors, so the keys are torchvision's)."""
        stem = ("conv1", "bn1", "relu") if self.small_input else ("conv1", "bn1", "relu", "maxpool")
        return (*stem, *STAGES, "avgpool", "flatten", "fc")

    @property
    def unit_positions(self) -> list[int]:
        """Top-level positions where the trainable units start: the stem, each stage, ``fc``."""
        names = self.module_names
        return [0, *(names.index(stage) for stage in STAGES), names.index("fc")]

    @staticmethod
    def _norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", *NORM_STATISTICS)}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Floating tensors by state-dict key (torchvision's), with their shapes."""
        k = self.stem_kernel
        channels = self.input_shape[0]
        width = self.base_width
        shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (width, channels, k, k)}
        shapes.update(self._norm("bn1", width))
        in_channels = width
        for stage, (count, out) in enumerate(zip(self.blocks, self.stage_widths, strict=True)):
            for block in range(count):
                prefix = f"{STAGES[stage]}.{block}"
                shapes[f"{prefix}.conv1.weight"] = (out, in_channels, 3, 3)
                shapes.update(self._norm(f"{prefix}.bn1", out))
                shapes[f"{prefix}.conv2.weight"] = (out, out, 3, 3)
                shapes.update(self._norm(f"{prefix}.bn2", out))
                if block == 0 and (stage > 0 or in_channels != out):
                    shapes[f"{prefix}.downsample.0.weight"] = (out, in_channels, 1, 1)
                    shapes.update(self._norm(f"{prefix}.downsample.1", out))
                in_channels = out
        shapes["fc.weight"] = (1, self.feature_width)
        shapes["fc.bias"] = (1,)
        return shapes

    def counter_keys(self) -> list[str]:
        """The BatchNorm ``num_batches_tracked`` keys (int64 scalars in a torchvision state dict)."""
        return [key.removesuffix(".running_mean") + f".{COUNTER}" for key in self.expected_shapes()
                if key.endswith(".running_mean")]

    def parameter_count(self) -> int:
        """Trainable scalars (running statistics excluded)."""
        return scalar_count(shape for key, shape in self.expected_shapes().items()
                            if not key.endswith(NORM_STATISTICS))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": "resnet", "depth": self.depth, "input_shape": list(self.input_shape),
                "small_input": self.small_input, "base_width": self.base_width}


def scalar_count(shapes: Iterable[tuple[int, ...]]) -> int:
    """Total number of scalars in tensors of these shapes."""
    return sum(math.prod(shape) for shape in shapes)


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"architecture: {name} must be an integer in [{low}, {high}]; got {value!r}")
    return value


def _min_side(small_input: bool) -> int:
    """Smallest image side whose feature map stays at least 1×1 through the five downsamplings
    (three with the small-input stem)."""
    return MIN_SIDE if small_input else 2 * MIN_SIDE


def parse_resnet(data: dict[str, Any]) -> ResNetLayout:
    """Validate a ``resnet`` architecture object.

    Raises:
        InputError: naming the field to fix.
    """
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise InputError(f"architecture: unknown field(s) {', '.join(unknown)} for type 'resnet' "
                         f"(allowed: {', '.join(sorted(FIELDS))})")
    depth = data.get("depth")
    if depth not in RESNET_DEPTHS or isinstance(depth, bool):
        raise InputError(f"architecture: depth must be one of {sorted(RESNET_DEPTHS)} (BasicBlock ResNets); "
                         f"got {depth!r}")
    small_input = data.get("small_input", False)
    if not isinstance(small_input, bool):
        raise InputError(f"architecture: small_input must be true or false; got {small_input!r}")
    shape = data.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3:
        raise InputError(f"architecture: input_shape must be [C, H, W]; got {shape!r}")
    side = _min_side(small_input)
    channels = _int_in(shape[0], "input_shape[0] (channels)", 1, MAX_CHANNELS)
    height = _int_in(shape[1], "input_shape[1] (height)", side, MAX_SIDE)
    width = _int_in(shape[2], "input_shape[2] (width)", side, MAX_SIDE)
    base_width = _int_in(data.get("base_width", 64), "base_width", 1, MAX_BASE_WIDTH)
    return ResNetLayout(depth=int(depth), input_shape=(channels, height, width), small_input=small_input,
                        base_width=base_width)
