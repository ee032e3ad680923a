"""The model seen as a frozen feature extractor plus a logistic head.

For an MLP the head is the last Linear layer (its weight and bias); for logistic regression
(``hidden: []``) the extractor is the identity and the head is the whole model. Head parameters
are handled in float64 as one vector θ = [w; b]; the design matrix Φ = [φ(x), 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn

from workers.engine.errors import InputError
from workers.engine.io.architecture import ArchSpec
from workers.engine.models.design import DEFAULT_CHUNK, Design
from workers.engine.models.training import build_model

__all__ = ["DEVICE_TYPES", "HeadModel", "floating_dtype", "pick_device"]

EXTRACT_BATCH = 65_536


def floating_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype of the weights (a resnet's int64 BatchNorm counters aside)."""
    return next(value.dtype for value in state.values() if value.is_floating_point())


DEVICE_TYPES = ("cpu", "cuda")
"""Device types the engine runs on."""


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU.

    Raises:
        InputError: ``requested`` is not ``cpu``, ``cuda`` or ``cuda:N``, or names CUDA (or a
            CUDA device index) this machine does not have.
    """
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise InputError(f"--device {requested}: unknown device; use cpu, cuda or cuda:N, or omit --device "
                         "(CUDA when available, else CPU)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: CUDA is not available on this machine "
                         "(torch.cuda.is_available() is false); use --device cpu or omit --device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of them "
                         "or omit --device")
    return device


@dataclass
class HeadModel:
    """A checkpoint split into a frozen extractor and a float64 logistic head."""

    arch: ArchSpec
    state: dict[str, torch.Tensor]
    network: nn.Sequential
    device: torch.device
    designs: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)
    """Dense designs of the splits kept by :meth:`keep_design`, shared with every model that
    differs from this one only in its head (:meth:`with_theta`): their extractor is the same."""

    @classmethod
    def from_state(cls, arch: ArchSpec, state: dict[str, torch.Tensor], device: torch.device) -> HeadModel:
        """Build the Sequential of ``arch`` on ``device`` and load ``state`` into it strictly.

        ``state`` may be keyed as the user's checkpoint or as the engine's Sequential; the model
        keeps it keyed as the user's (:meth:`ArchSpec.external_key`).
        """
        network = build_model(arch).to(dtype=floating_dtype(state))
        network.load_state_dict(arch.to_internal(state), strict=True)
        network.to(device).eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        return cls(arch=arch, state=arch.to_external(state), network=network, device=device)

    @property
    def dtype(self) -> torch.dtype:
        """The checkpoint's floating dtype."""
        return floating_dtype(self.state)

    @property
    def extractor(self) -> nn.Sequential:
        """Every layer before the head (empty for logistic regression)."""
        return cast(nn.Sequential, self.network[: self.arch.head_index])

    def theta(self) -> torch.Tensor:
        """The head parameters [w; b] as a float64 vector on the device."""
        head = cast(nn.Linear, self.network[self.arch.head_index])
        return torch.cat([head.weight.reshape(-1), head.bias.reshape(-1)]).to(torch.float64)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Head features φ(x) of an input batch, in float64 (no bias column)."""
        with torch.no_grad():
            embedded: torch.Tensor = self.extractor(inputs.to(self.device, self.dtype))
            return embedded.to(torch.float64)

    def head_design(self, features: np.ndarray, chunk_size: int = DEFAULT_CHUNK, embedded: bool = False,
                    ) -> Design:
        """Φ = [φ(x), 1] of a feature array, φ stored once in the checkpoint dtype.

        For logistic regression φ(x) = x, and for rows already ``embedded`` (read through
        :meth:`embedding`) the features are φ: the design wraps the array itself (no copy on the
        CPU); otherwise φ is computed batch by batch into one preallocated n × h tensor.
        """
        if len(self.extractor) == 0 or embedded:
            stored = torch.as_tensor(features, device=self.device).reshape(features.shape[0], -1)
            return Design(stored, chunk_size)
        stored = torch.empty(features.shape[0], self.arch.head_in_features, dtype=self.dtype,
                             device=self.device)
        for start, embedded_rows in self.batches(features, self.extractor):
            stored[start : start + embedded_rows.shape[0]] = embedded_rows
        return Design(stored, chunk_size)

    def batches(self, rows: np.ndarray, layers: nn.Module) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, layers(batch))`` for every ``EXTRACT_BATCH`` rows, in the checkpoint dtype on
        the device, without gradients, flattened to one row each: the one batching every φ(x) and
        logit of the model is computed with (so that they agree bit for bit)."""
        for start in range(0, rows.shape[0], EXTRACT_BATCH):
            batch = torch.as_tensor(rows[start : start + EXTRACT_BATCH], device=self.device, dtype=self.dtype)
            with torch.no_grad():  # per batch: grad mode is not left off in the caller between yields
                out = layers(batch)
            yield start, out.reshape(batch.shape[0], -1)

    def embedding(self) -> ExtractorEmbedding:
        """The extractor as a :class:`~workers.engine.io.feature_matrix.RowTransform`: the rows
        it gives are bit for bit the φ(x) of :meth:`head_design` (same batches, same layers)."""
        return ExtractorEmbedding(self)

    def logits_of_embedded(self, embedded: np.ndarray) -> torch.Tensor:
        """The network's logits (float64) of rows given as their head features φ(x): the head
        layer alone, as the network applies it."""
        return self._flat_logits(embedded, self.network[self.arch.head_index])

    def design(self, features: np.ndarray) -> torch.Tensor:
        """Design matrix Φ = [φ(x), 1] as one dense float64 tensor (audit and eval splits); the
        kept one when ``features`` is a split kept by :meth:`keep_design`."""
        kept = self._kept(features)
        return kept if kept is not None else self.head_design(features).dense()

    def keep_design(self, features: np.ndarray) -> torch.Tensor:
        """Compute a split's design once and keep it for this model and its head variants."""
        kept = self._kept(features)
        if kept is None:
            kept = self.head_design(features).dense()
            self.designs.append((features, kept))
        return kept

    def keeps(self, features: np.ndarray) -> bool:
        """Whether ``features`` is a split kept by :meth:`keep_design`."""
        return self._kept(features) is not None

    def _kept(self, features: np.ndarray) -> torch.Tensor | None:
        return next((design for array, design in self.designs if array is features), None)

    def head_logits(self, features: np.ndarray) -> torch.Tensor:
        """Logits of a kept split as Φθ, without running the network (float64 products with the
        head rounded to the checkpoint dtype, as saved); other inputs go through :meth:`logits`."""
        kept = self._kept(features)
        return kept @ self.theta() if kept is not None else self.logits(features)

    def with_theta(self, theta: torch.Tensor) -> HeadModel:
        """A copy whose head is ``theta`` (cast to the checkpoint dtype); the extractor is shared."""
        d = self.arch.head_in_features
        state = dict(self.state)
        key = self.arch.external_key
        state[key(f"{self.arch.head_name}.weight")] = theta[:d].reshape(1, d).to("cpu", self.dtype).clone()
        state[key(f"{self.arch.head_name}.bias")] = theta[d:].reshape(1).to("cpu", self.dtype).clone()
        model = HeadModel.from_state(self.arch, state, self.device)
        model.designs = self.designs
        return model

    def logits(self, features: np.ndarray) -> torch.Tensor:
        """Logits of the actual network (checkpoint dtype), as float64."""
        return self._flat_logits(features, self.network)

    def _flat_logits(self, rows: np.ndarray, layers: nn.Module) -> torch.Tensor:
        outputs = [out.reshape(-1).to(torch.float64) for _, out in self.batches(rows, layers)]
        return torch.cat(outputs) if outputs else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class ExtractorEmbedding:
    """φ(x) of a block of input rows, on the model's device, returned to the CPU in the
    checkpoint dtype (:meth:`HeadModel.embedding`)."""

    model: HeadModel

    @property
    def width(self) -> int:
        """The head's width h."""
        return self.model.arch.head_in_features

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """φ of ``block``'s rows, in batches of ``EXTRACT_BATCH`` as :meth:`HeadModel.head_design`."""
        out = np.empty((block.shape[0], self.width), dtype=block.dtype)
        for start, embedded_rows in self.model.batches(block, self.model.extractor):
            out[start : start + embedded_rows.shape[0]] = embedded_rows.cpu().numpy()
        return out
