"""The head's design matrix Φ = [φ(x), 1], held once and read chunk by chunk.

Only φ is stored, in its storage dtype (the checkpoint's, usually float32; for logistic
regression it is the feature array itself, not a copy); the bias column of ones is implicit.
Every quantity is computed chunk by chunk in float64 from a [chunk, h + 1] float64 block, so
memory is ``n·h·itemsize`` for the matrix plus O(chunk·h + h²) for the work, never an n × (h+1)
float64 copy (8.2 GB at 1 M × 512, against 2 GB for the float32 φ).

The Gram matrix ``Φᵀ diag(c) Φ`` is the dominant cost of the head scope (n·(h+1)²/2
multiply-adds); on the CPU it is a symmetric rank-k update: numpy's matmul sends ``Bᵀ B`` to
BLAS ``syrk`` (half the work of the general product) and mirrors the triangle. That measured
1.4× faster on 8192 × 513 blocks than scipy's ``dsyrk`` on the transposed (Fortran) view,
which this module used before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_CHUNK", "Design", "GramAccumulator", "blas_threads_like_torch"]

DEFAULT_CHUNK = 8192
"""Rows per block: a 8192 × 513 float64 block is 34 MB, large enough for BLAS to run at speed."""


def blas_threads_like_torch() -> AbstractContextManager[Any]:
    """Run scipy's BLAS with torch's thread count inside the context.

    OpenBLAS otherwise starts one thread per core whatever ``--threads`` says; on a busy machine
    its spinning threads made an 8192 × 100 ``dsyrk`` 17–25× slower than on one thread.
    """
    from threadpoolctl import threadpool_limits

    limits: AbstractContextManager[Any] = threadpool_limits(limits=torch.get_num_threads(), user_api="blas")
    return limits


@dataclass(frozen=True)
class Design:
    """Φ = [φ, 1] over ``features`` (n × h, any floating dtype, on the engine's device)."""

    features: torch.Tensor
    chunk_size: int = DEFAULT_CHUNK
    _scratch: list[np.ndarray] = field(default_factory=list, init=False, repr=False, compare=False)
    """The CPU buffer :meth:`chunk_block` fills (one per design, made on first use)."""

    @property
    def n(self) -> int:
        """Rows."""
        return int(self.features.shape[0])

    @property
    def width(self) -> int:
        """Columns of Φ: h + 1 (the bias)."""
        return int(self.features.shape[1]) + 1

    @property
    def device(self) -> torch.device:
        """Where the stored φ lives."""
        return self.features.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored φ."""
        return self.features.numel() * self.features.element_size()

    def chunks(self) -> Iterator[slice]:
        """Row slices of at most ``chunk_size`` rows."""
        for start in range(0, self.n, self.chunk_size):
            yield slice(start, min(start + self.chunk_size, self.n))

    def block(self, rows: slice) -> torch.Tensor:
        """Rows of Φ as a float64 [r, h + 1] tensor (a fresh buffer).

        On the CPU the conversion goes through numpy, whose float32 → float64 copy into the
        strided block measured 3.5× faster than torch's.
        """
        part = self.features[rows]
        if self.device.type == "cpu":
            filled = np.empty((part.shape[0], self.width))
            filled[:, :-1] = part.numpy()
            filled[:, -1] = 1.0
            return torch.from_numpy(filled)
        out = torch.empty(part.shape[0], self.width, dtype=torch.float64, device=self.device)
        out[:, :-1] = part
        out[:, -1] = 1.0
        return out

    def chunk_block(self, rows: slice) -> torch.Tensor:
        """:meth:`block` into this design's reusable buffer: valid until the next call.

        A fresh 8192 × 513 float64 block is a fresh 34 MB mapping whose pages fault in as it is
        filled, ≈ 13–54 ms a chunk in the VMs this runs on, against ≈ 6 ms for the copy itself;
        every pass over the rows reads its chunks one after the other, so one buffer serves them.
        """
        if self.device.type != "cpu":
            return self.block(rows)
        part = self.features[rows]
        if not self._scratch:
            self._scratch.append(np.empty((min(self.chunk_size, self.n), self.width)))
        filled = self._scratch[0][: part.shape[0]]
        filled[:, :-1] = part.numpy()
        filled[:, -1] = 1.0
        return torch.from_numpy(filled)

    def dense(self) -> torch.Tensor:
        """The whole Φ as one float64 tensor (only for small matrices: audit and eval splits)."""
        return self.block(slice(0, self.n))

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """Φ v for a float64 vector (or [h + 1, k] matrix) ``vector``, in float64."""
        return torch.cat([self.chunk_block(rows) @ vector for rows in self.chunks()]) if self.n else \
            torch.zeros((0, *vector.shape[1:]), dtype=torch.float64, device=self.device)

    def rmatvec(self, vector: torch.Tensor) -> torch.Tensor:
        """Φᵀ v for a float64 n-vector ``vector``."""
        total = torch.zeros(self.width, dtype=torch.float64, device=self.device)
        for rows in self.chunks():
            total += self.chunk_block(rows).T @ vector[rows]
        return total


class GramAccumulator:
    """``Σ_chunks Bᵀ diag(c) B`` for float64 blocks B, as ``(√c B)ᵀ(√c B)`` by BLAS ``syrk`` on
    the CPU and a matrix product on CUDA; rows with a negative coefficient (negative effective
    weights) go through the general product, which is exact for any sign."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.device = device
        self._symmetric = np.zeros((width, width)) if device.type == "cpu" else None
        self._full = torch.zeros(width, width, dtype=torch.float64, device=device)
        self._scratch = np.empty((0, width))

    def add(self, block: torch.Tensor, scale: torch.Tensor, consume: bool = False) -> None:
        """Add ``blockᵀ diag(scale) block``; with ``consume`` the block's buffer may be
        overwritten (it is the caller's last use of it), which saves a copy per chunk."""
        if bool((scale < 0).any()) or self._symmetric is None:
            self._full += block.T @ (scale.unsqueeze(1) * block)
            return
        values = block.numpy()
        if consume:
            target = values
        else:
            if self._scratch.shape != values.shape:
                self._scratch = np.empty(values.shape)
            target = self._scratch
        rooted = np.multiply(values, np.sqrt(scale.numpy())[:, None], out=target)
        self._symmetric += rooted.T @ rooted  # numpy sends Aᵀ A to BLAS syrk

    def result(self) -> torch.Tensor:
        """The accumulated symmetric matrix (float64, on the device)."""
        total = self._full
        if self._symmetric is not None:
            total = total + torch.from_numpy(self._symmetric)
        return 0.5 * (total + total.T)
