"""The model seen as a frozen feature extractor plus a logistic head.

For an MLP the head is the last Linear layer (its weight and bias); for logistic regression
(``hidden: []``) the extractor is the identity and the head is the whole model. Head parameters
are handled in float64 as one vector θ = [w; b]; the design matrix Φ = [φ(x), 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from workers.engine.errors import InputError
from workers.engine.io.architecture import ArchSpec
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

    def design(self, features: np.ndarray) -> torch.Tensor:
        """Design matrix Φ = [φ(x), 1] for a feature array, float64 on the device.

        Filled block by block into one preallocated n × (d+1) tensor: at 1 M × 512 each extra
        copy (the concatenated blocks, then the bias column appended) would cost 4 GB.
        """
        rows, width = features.shape[0], self.arch.head_in_features
        design = torch.empty(rows, width + 1, dtype=torch.float64, device=self.device)
        design[:, width] = 1.0
        for start in range(0, rows, EXTRACT_BATCH):
            batch = torch.from_numpy(features[start : start + EXTRACT_BATCH])
            design[start : start + batch.shape[0], :width] = self.embed(batch).reshape(batch.shape[0], width)
        return design

    def with_theta(self, theta: torch.Tensor) -> HeadModel:
        """A copy whose head is ``theta`` (cast to the checkpoint dtype); the extractor is shared."""
        d = self.arch.head_in_features
        state = dict(self.state)
        key = self.arch.external_key
        state[key(f"{self.arch.head_name}.weight")] = theta[:d].reshape(1, d).to("cpu", self.dtype).clone()
        state[key(f"{self.arch.head_name}.bias")] = theta[d:].reshape(1).to("cpu", self.dtype).clone()
        return HeadModel.from_state(self.arch, state, self.device)

    def logits(self, features: np.ndarray) -> torch.Tensor:
        """Logits of the actual network (checkpoint dtype), as float64."""
        outputs = []
        with torch.no_grad():
            for start in range(0, features.shape[0], EXTRACT_BATCH):
                rows = features[start : start + EXTRACT_BATCH]
                batch = torch.as_tensor(rows, device=self.device, dtype=self.dtype)
                outputs.append(self.network(batch).reshape(-1).to(torch.float64))
        return torch.cat(outputs) if outputs else torch.zeros(0, dtype=torch.float64)
