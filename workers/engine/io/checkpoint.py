"""Checkpoint IO: safetensors only, validated against the architecture before any tensor loads."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workers.engine.errors import CheckpointError
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.identity import check_recorded_architecture
from workers.engine.io.safetensors_header import (
    check_against_arch,
    checkpoint_dtypes,
    read_header_and_metadata,
)

__all__ = ["Checkpoint", "file_sha256", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".onnx", ".jit")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its tensors, its safetensors metadata and the file's sha256."""

    state: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str


def load_checkpoint(path: str | Path, arch: ArchSpec) -> dict[str, torch.Tensor]:
    """The tensors of :func:`read_checkpoint`."""
    return read_checkpoint(path, arch).state


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path, arch: ArchSpec) -> Checkpoint:
    """Load a safetensors state dict that matches ``arch`` exactly, with finite values.

    The header is parsed and checked (format, keys, shapes, dtypes, and the architecture the
    checkpoint records, if any) before the data is read, so a pickle file is refused without ever
    being deserialized.

    Raises:
        CheckpointError: wrong format, wrong keys/shapes/dtypes, another recorded architecture,
            NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: {path.suffix} checkpoints are pickle-based (or executable model formats) "
            "and are refused without being loaded; save the state dict with "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        )
    header, metadata = read_header_and_metadata(path, dtypes=checkpoint_dtypes(arch))
    check_against_arch(header, arch)
    check_recorded_architecture(metadata, arch)
    state = load_file(str(path), device="cpu")
    for key, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"checkpoint tensor {key!r} contains NaN or Inf")
    # A state dict saved without BatchNorm's counters loads into torch as if they were 0; the
    # corrected checkpoint carries them either way, so its keys are torchvision's.
    for key in arch.counter_keys():
        state.setdefault(key, torch.tensor(0, dtype=torch.int64))
    return Checkpoint(state=state, metadata=metadata, sha256=file_sha256(path))


def save_checkpoint(state: dict[str, torch.Tensor], path: str | Path,
                    metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors atomically (temp file in the same folder, then rename),
    with ``metadata`` in its header (:mod:`workers.engine.io.identity`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
