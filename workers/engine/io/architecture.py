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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from workers.engine.errors import InputError

__all__ = ["ACTIVATIONS", "FAMILIES", "ArchSpec", "load_arch", "parse_arch"]

T = TypeVar("T")
MAX_WIDTH = 65_536
MAX_DEPTH = 16
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")
FAMILIES = ("mlp", "linear_head")


@dataclass(frozen=True)
class ArchSpec:
    """A binary classifier with one output logit: an MLP, or a bare linear head on embeddings."""

    in_features: int
    hidden: tuple[int, ...]
    activation: str = "relu"
    dropout: float = 0.0
    family: str = "mlp"

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
        stride = 3 if self.dropout > 0 else 2
        return [stride * i for i in range(len(self.hidden) + 1)]

    @property
    def head_index(self) -> int:
        """Sequential index of the last Linear layer, the logistic head."""
        return self.linear_indices[-1]

    @property
    def head_in_features(self) -> int:
        """Width of the features the head sees."""
        return self.hidden[-1] if self.hidden else self.in_features

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict key (the user's) -> tensor shape."""
        widths = [self.in_features, *self.hidden, 1]
        shapes: dict[str, tuple[int, ...]] = {}
        for layer, index in enumerate(self.linear_indices):
            shapes[self.external_key(f"{index}.weight")] = (widths[layer + 1], widths[layer])
            shapes[self.external_key(f"{index}.bias")] = (widths[layer + 1],)
        return shapes

    def parameter_count(self) -> int:
        """Number of scalar parameters."""
        total = 0
        for shape in self.expected_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of PRODUCT.md."""
        if self.family == "linear_head":
            return {"type": "linear_head", "in_features": self.in_features}
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


def parse_arch(data: Any) -> ArchSpec:
    """Validate an architecture JSON object.

    Raises:
        InputError: naming the field to fix.
    """
    if not isinstance(data, dict):
        raise InputError("architecture must be a JSON object like "
                         '{"type": "mlp", "in_features": 10, "hidden": [32], "activation": "relu"}')
    family = data.get("type")
    if family not in FAMILIES:
        raise InputError(f"architecture: type must be one of {', '.join(FAMILIES)}; got {family!r}")
    allowed = {"type", "in_features"} if family == "linear_head" else {"type", "in_features", "hidden",
                                                                      "activation", "dropout"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"architecture: unknown field(s) {', '.join(unknown)} for type {family!r}")
    in_features = _positive_int(data.get("in_features"), "in_features")
    if family == "linear_head":
        return ArchSpec(in_features=in_features, hidden=(), family="linear_head")
    hidden = data.get("hidden", [])
    if not isinstance(hidden, list) or len(hidden) > MAX_DEPTH:
        raise InputError(f"architecture: hidden must be a list of at most {MAX_DEPTH} widths")
    widths = tuple(_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
    activation = data.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise InputError(f"architecture: activation must be one of {', '.join(ACTIVATIONS)}; got "
                         f"{activation!r}")
    dropout = data.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InputError(f"architecture: dropout must be a number in [0, 1); got {dropout!r}")
    if dropout > 0 and not widths:
        raise InputError("architecture: dropout needs hidden layers (logistic regression has none)")
    return ArchSpec(in_features=in_features, hidden=widths, activation=activation, dropout=float(dropout))


def load_arch(path: str | Path) -> ArchSpec:
    """Read and validate an architecture JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"architecture file not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"architecture file {path} is not valid JSON: {exc}") from exc
    return parse_arch(data)
