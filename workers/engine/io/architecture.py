"""Allow-listed architectures, described by JSON; no torch here (the API validates uploads).

``{"type": "mlp", "in_features": D, "hidden": [h1, ..., hk], "activation": "relu"}`` is exactly
``torch.nn.Sequential(Linear(D, h1), ReLU(), ..., Linear(hk, 1))``; ``hidden: []`` is logistic
regression. State-dict keys are the Sequential's: ``0.weight``, ``0.bias``, ``2.weight``, ...
``activation`` is one of :data:`ACTIVATIONS` (torch's defaults: LeakyReLU slope 0.01, exact GELU).
With ``"dropout": p`` > 0 a ``Dropout(p)`` follows every activation, as in the user's Sequential,
so the Linear layers sit at indices 0, 3, 6, ...; dropout is inactive at evaluation.

``{"type": "linear_head", "in_features": d}`` is the model-agnostic path: the datasets hold the
penultimate-layer embeddings of any backbone (BERT, ViT, a tree ensemble's leaf embeddings, ...)
and the checkpoint holds only the head, ``weight [1, d]`` and ``bias [1]``, exactly the keys of a
plain ``torch.nn.Linear(d, 1)``. Internally the engine runs every family as a ``Sequential``;
:meth:`ArchSpec.external_key` maps its keys to the user's.

``{"type": "cnn", "input_shape": [C, H, W], "blocks": [{"out_channels": 8, "kernel_size": 3,
"padding": 1, "pool": "max", "pool_size": 2}, ...], "hidden": [32], "activation": "relu"}`` is
exactly ``Sequential(Conv2d(C, 8, 3, padding=1), Act(), MaxPool2d(2), ..., Flatten(),
Linear(F, 32), Act(), Linear(32, 1))``: a block is a stride-1 ``Conv2d``, the activation and,
unless ``pool`` is ``"none"``, a ``MaxPool2d``/``AvgPool2d(pool_size)``. F is the flattened size
after the last block. Keys are the Sequential's indices (``0.weight``, ``0.bias``, ``3.weight``, ...).

``{"type": "resnet", "depth": 18, "input_shape": [3, 32, 32]}`` is torchvision's
``resnet18(num_classes=1)`` (or ``resnet34``) with its state-dict keys; see
:mod:`workers.engine.io.resnet` for the small-image stem and ``base_width``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from workers.engine.errors import InputError
from workers.engine.io.json_input import load_json
from workers.engine.io.resnet import ResNetLayout, parse_resnet, scalar_count

__all__ = ["ACTIVATIONS", "FAMILIES", "POOLS", "ArchSpec", "ConvBlock", "load_arch", "parse_arch"]

T = TypeVar("T")
MAX_WIDTH = 65_536
MAX_DEPTH = 16
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")
FAMILIES = ("mlp", "linear_head", "cnn", "resnet")
POOLS = ("max", "avg", "none")
MAX_BLOCKS = 8
MAX_CHANNELS = 1024
MAX_KERNEL = 11
MAX_POOL = 16
MAX_SIDE = 512


@dataclass(frozen=True)
class ConvBlock:
    """One cnn block: ``Conv2d(in, out_channels, kernel_size, padding=padding)``, the activation,
    then ``MaxPool2d``/``AvgPool2d(pool_size)`` unless ``pool`` is ``"none"``."""

    out_channels: int
    kernel_size: int
    padding: int = 0
    pool: str = "none"
    pool_size: int = 2

    def out_side(self, side: int) -> int:
        """Spatial side after the convolution (stride 1) and the pool (stride = pool_size)."""
        side = side + 2 * self.padding - self.kernel_size + 1
        if self.pool != "none":
            side = side // self.pool_size
        return side

    def to_dict(self) -> dict[str, Any]:
        """The block's JSON form."""
        return {"out_channels": self.out_channels, "kernel_size": self.kernel_size, "padding": self.padding,
                "pool": self.pool, "pool_size": self.pool_size}


@dataclass(frozen=True)
class ArchSpec:
    """A binary classifier with one output logit: an MLP, a bare linear head on embeddings, a cnn
    or a torchvision-keyed ResNet."""

    in_features: int
    hidden: tuple[int, ...]
    activation: str = "relu"
    dropout: float = 0.0
    family: str = "mlp"
    image_shape: tuple[int, int, int] | None = None
    """``(C, H, W)`` of a cnn's input; ``None`` for the other families."""
    blocks: tuple[ConvBlock, ...] = ()
    """A cnn's convolution blocks, in order."""
    resnet: ResNetLayout | None = None
    """A resnet's layout; ``None`` for the other families."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input row: ``(C, H, W)`` for a cnn, else ``(in_features,)``."""
        return self.image_shape if self.image_shape is not None else (self.in_features,)

    @property
    def conv_indices(self) -> list[int]:
        """Sequential indices of a cnn's Conv2d layers (empty for the other families)."""
        indices, position = [], 0
        for block in self.blocks:
            indices.append(position)
            position += 2 if block.pool == "none" else 3
        return indices

    @property
    def feature_maps(self) -> list[tuple[int, int, int]]:
        """``(channels, H, W)`` after each cnn block (empty for the other families)."""
        if self.image_shape is None:
            return []
        channels, height, width = self.image_shape
        shapes = []
        for block in self.blocks:
            channels, height, width = block.out_channels, block.out_side(height), block.out_side(width)
            shapes.append((channels, height, width))
        return shapes

    @property
    def flat_features(self) -> int:
        """Width of the first Linear layer's input (a cnn's flattened last feature map)."""
        if self.resnet is not None:
            return self.resnet.feature_width
        if self.image_shape is None:
            return self.in_features
        channels, height, width = (self.feature_maps or [self.image_shape])[-1]
        return channels * height * width

    def external_key(self, internal: str) -> str:
        """The user's state-dict key for a key of the engine's ``Sequential``."""
        if self.family == "linear_head":
            return internal.removeprefix("0.")
        return internal

    def to_external(self, state: dict[str, T]) -> dict[str, T]:
        """``state`` keyed as the user's checkpoint is (keys already external are kept)."""
        return {self.external_key(key): value for key, value in state.items()}

    def to_internal(self, state: dict[str, T]) -> dict[str, T]:
        """``state`` keyed as the engine's ``Sequential`` is (keys already internal are kept)."""
        if self.family != "linear_head":
            return dict(state)
        return {key if key.startswith("0.") else f"0.{key}": value for key, value in state.items()}

    @property
    def linear_indices(self) -> list[int]:
        """Sequential indices of the Linear layers (activations, and dropout, sit between them)."""
        if self.resnet is not None:
            return [self.resnet.module_names.index("fc")]
        stride = 3 if self.dropout > 0 else 2
        # A cnn's Linear layers follow its blocks and the Flatten.
        start = sum(2 if b.pool == "none" else 3 for b in self.blocks) + (1 if self.family == "cnn" else 0)
        return [start + stride * i for i in range(len(self.hidden) + 1)]

    @property
    def head_index(self) -> int:
        """Sequential index of the last Linear layer, the logistic head."""
        return self.linear_indices[-1]

    @property
    def uses_activation(self) -> bool:
        """Whether ``activation`` is part of the network (an mlp with hidden layers, a cnn); a
        resnet is ReLU throughout, a linear head and logistic regression have none."""
        return self.family == "cnn" or (self.family == "mlp" and bool(self.hidden))

    @property
    def head_name(self) -> str:
        """The engine's module name of the head (``fc`` for a resnet, else its index)."""
        return "fc" if self.resnet is not None else str(self.head_index)

    @property
    def trainable_units(self) -> list[int]:
        """Sequential positions where the units a network method's ``layers`` counts start, from the
        input: the Linear layers; for a resnet the stem, ``layer1`` … ``layer4`` and ``fc``."""
        return self.resnet.unit_positions if self.resnet is not None else self.linear_indices

    @property
    def unit_description(self) -> str:
        """What :attr:`trainable_units` are, for messages."""
        if self.resnet is not None:
            return "trainable units (stem, layer1, layer2, layer3, layer4, fc)"
        return "Linear layers"

    def counter_keys(self) -> list[str]:
        """Integer bookkeeping tensors a checkpoint may carry beside :meth:`expected_shapes` (a
        resnet's BatchNorm ``num_batches_tracked``); they never change the outputs."""
        return self.resnet.counter_keys() if self.resnet is not None else []

    @property
    def head_in_features(self) -> int:
        """Width of the features the head sees."""
        return self.hidden[-1] if self.hidden else self.flat_features

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict key (the user's) -> tensor shape (floating tensors)."""
        if self.resnet is not None:
            return self.resnet.expected_shapes()
        widths = [self.flat_features, *self.hidden, 1]
        shapes: dict[str, tuple[int, ...]] = {}
        channels = self.image_shape[0] if self.image_shape is not None else 0
        for block, index in zip(self.blocks, self.conv_indices, strict=True):
            k = block.kernel_size
            shapes[f"{index}.weight"] = (block.out_channels, channels, k, k)
            shapes[f"{index}.bias"] = (block.out_channels,)
            channels = block.out_channels
        for layer, index in enumerate(self.linear_indices):
            shapes[self.external_key(f"{index}.weight")] = (widths[layer + 1], widths[layer])
            shapes[self.external_key(f"{index}.bias")] = (widths[layer + 1],)
        return shapes

    def parameter_count(self) -> int:
        """Number of scalar parameters (a resnet's running statistics excluded)."""
        if self.resnet is not None:
            return self.resnet.parameter_count()
        return scalar_count(self.expected_shapes().values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of PRODUCT.md."""
        if self.family == "linear_head":
            return {"type": "linear_head", "in_features": self.in_features}
        if self.resnet is not None:
            return self.resnet.to_dict()
        if self.family == "cnn":
            return {"type": "cnn", "input_shape": list(self.input_shape),
                    "blocks": [block.to_dict() for block in self.blocks], "hidden": list(self.hidden),
                    "activation": self.activation}
        out: dict[str, Any] = {
            "type": "mlp",
            "in_features": self.in_features,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }
        if self.dropout > 0:
            out["dropout"] = self.dropout
        return out


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
        raise InputError(f"architecture: {name} must be an integer in [1, {MAX_WIDTH}]; got {value!r}")
    return value


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"architecture: {name} must be an integer in [{low}, {high}]; got {value!r}")
    return value


def _parse_hidden(data: dict[str, Any]) -> tuple[int, ...]:
    hidden = data.get("hidden", [])
    if not isinstance(hidden, list) or len(hidden) > MAX_DEPTH:
        raise InputError(f"architecture: hidden must be a list of at most {MAX_DEPTH} widths")
    return tuple(_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))


def _parse_activation(data: dict[str, Any]) -> str:
    activation = data.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise InputError(f"architecture: activation must be one of {', '.join(ACTIVATIONS)}; got "
                         f"{activation!r}")
    return str(activation)


BLOCK_FIELDS = {"out_channels", "kernel_size", "padding", "pool", "pool_size"}


def _parse_block(data: Any, name: str, side: tuple[int, int]) -> ConvBlock:
    if not isinstance(data, dict):
        raise InputError(f"architecture: {name} must be an object like "
                         '{"out_channels": 8, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2}')
    unknown = sorted(set(data) - BLOCK_FIELDS)
    if unknown:
        raise InputError(f"architecture: unknown field(s) {', '.join(unknown)} in {name}")
    out_channels = _bounded_int(data.get("out_channels"), f"{name}.out_channels", 1, MAX_CHANNELS)
    kernel = _bounded_int(data.get("kernel_size"), f"{name}.kernel_size", 1, MAX_KERNEL)
    padding = _bounded_int(data.get("padding", 0), f"{name}.padding", 0, kernel - 1)
    pool = data.get("pool", "none")
    if pool not in POOLS:
        raise InputError(f"architecture: {name}.pool must be one of {', '.join(POOLS)}; got {pool!r}")
    pool_size = _bounded_int(data.get("pool_size", 2), f"{name}.pool_size", 1, MAX_POOL)
    block = ConvBlock(out_channels, kernel, padding, str(pool), pool_size)
    conv = [s + 2 * padding - kernel + 1 for s in side]
    if min(conv) < 1:
        raise InputError(f"architecture: {name}.kernel_size {kernel} (padding {padding}) is larger than its "
                         f"{side[0]}x{side[1]} input; use a smaller kernel, more padding, or fewer blocks")
    if min(block.out_side(s) for s in side) < 1:
        raise InputError(f"architecture: {name}.pool_size {pool_size} is larger than its {conv[0]}x{conv[1]} "
                         "feature map; use a smaller pool_size, pool 'none', or fewer blocks")
    return block


def _parse_cnn(data: dict[str, Any]) -> ArchSpec:
    shape = data.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3:
        raise InputError(f"architecture: input_shape must be [C, H, W]; got {shape!r}")
    channels = _bounded_int(shape[0], "input_shape[0] (channels)", 1, MAX_CHANNELS)
    height = _bounded_int(shape[1], "input_shape[1] (height)", 1, MAX_SIDE)
    width = _bounded_int(shape[2], "input_shape[2] (width)", 1, MAX_SIDE)
    raw_blocks = data.get("blocks")
    if not isinstance(raw_blocks, list) or not 1 <= len(raw_blocks) <= MAX_BLOCKS:
        raise InputError(f"architecture: blocks must be a list of 1 to {MAX_BLOCKS} convolution blocks")
    blocks: list[ConvBlock] = []
    side = (height, width)
    for i, raw in enumerate(raw_blocks):
        block = _parse_block(raw, f"blocks[{i}]", side)
        side = (block.out_side(side[0]), block.out_side(side[1]))
        blocks.append(block)
    return ArchSpec(in_features=channels * height * width, hidden=_parse_hidden(data),
                    activation=_parse_activation(data), family="cnn", image_shape=(channels, height, width),
                    blocks=tuple(blocks))


def parse_arch(data: Any) -> ArchSpec:
    """Validate an architecture JSON object.

    Raises:
        InputError: naming the field to fix.
    """
    if not isinstance(data, dict):
        raise InputError("architecture must be a JSON object like "
                         '{"type": "mlp", "in_features": 10, "hidden": [32], "activation": "relu"}')
    family = data.get("type")
    if family == "resnet":
        layout = parse_resnet(data)
        channels, height, width = layout.input_shape
        return ArchSpec(in_features=channels * height * width, hidden=(), family="resnet",
                        image_shape=layout.input_shape, resnet=layout)
    if family not in FAMILIES:
        raise InputError(f"architecture: type must be one of {', '.join(FAMILIES)}; got {family!r}")
    allowed = {"linear_head": {"type", "in_features"},
               "cnn": {"type", "input_shape", "blocks", "hidden", "activation"}}.get(
        family, {"type", "in_features", "hidden", "activation", "dropout"})
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"architecture: unknown field(s) {', '.join(unknown)} for type {family!r}")
    if family == "cnn":
        return _parse_cnn(data)
    in_features = _positive_int(data.get("in_features"), "in_features")
    if family == "linear_head":
        return ArchSpec(in_features=in_features, hidden=(), family="linear_head")
    widths = _parse_hidden(data)
    activation = _parse_activation(data)
    dropout = data.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InputError(f"architecture: dropout must be a number in [0, 1); got {dropout!r}")
    if dropout > 0 and not widths:
        raise InputError("architecture: dropout needs hidden layers (logistic regression has none)")
    return ArchSpec(in_features=in_features, hidden=widths, activation=activation, dropout=float(dropout))


def load_arch(path: str | Path) -> ArchSpec:
    """Read and validate an architecture JSON file."""
    try:
        data = load_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"architecture file not found: {path}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"architecture file {path} is not valid JSON: {exc}") from exc
    return parse_arch(data)
