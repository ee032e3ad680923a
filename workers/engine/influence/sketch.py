"""A row-sketch preconditioner for conjugate gradient on the damped Gauss-Newton matrix.

CG on ``A = G + σI`` (``G = Σᵢ cᵢ∇zᵢ∇zᵢᵀ``, ``cᵢ = wᵢpᵢ(1−pᵢ)``, σ = l2_reg + damping) needs
about √κ products, and a trained network's G has a few eigenvalues thousands of times above σ
(Adult's MLP: 122 k against 31). Most of G's mass sits in few directions that a few hundred rows
already show, so the preconditioner is G estimated from ``m`` rows drawn with probability
∝ |cᵢ| (with replacement, seeded), each weighted so the estimate is unbiased:

    Ĝ = UᵀU,   U = √(Σ|c| / m) · J_S        (J_S: the drawn rows' logit gradients, m × P)

and ``M = Ĝ + σI`` is inverted by Woodbury, ``M⁻¹r = (r − Uᵀ(σI + UUᵀ)⁻¹Ur) / σ``: one m × m
Cholesky factor, then two m × P products per application. When every row fits (n ≤ m) the rows
are taken once each with their own |cᵢ|, so M is G itself wherever the weights are positive.

CG keeps its own stopping rule on the unpreconditioned residual, so the preconditioner changes
how many products a solve takes, never what it converges to. That is why mixed-precision CG
applies it with U in float32 (the m × m factor stays float64): an application reads U twice, 72 MB
in float64 on the Adult MLP, about a tenth of a solve. It is built once per parameters,
weights and damping, and shared by every solve there (a job's influences, step and frontier).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.engine.errors import IllConditionedError, NonFiniteError

__all__ = ["MIN_SKETCH_ROWS", "SKETCH_MAX_BYTES", "SKETCH_SEED", "RowSketch", "draw_sketch_rows",
           "sketch_row_count"]

SKETCH_SEED = 0
"""Seeds the draw of the sketch's rows (solves are reproducible)."""
SKETCH_MAX_BYTES = 512 * 2**20
"""Most memory the sketch's m × P factor and m × m Gram matrix may take; m shrinks to fit (wide
networks get fewer rows)."""
MIN_SKETCH_ROWS = 128
"""Below this many rows the sketch is not worth its cost and CG runs unpreconditioned."""


def sketch_row_count(requested: int, n: int, parameters: int) -> int:
    """Rows m the sketch uses: ``requested`` (``influence.cg_preconditioner_rows``), at most the
    data, and at most what fits ``SKETCH_MAX_BYTES`` with its m × P factor and m × m Gram matrix;
    0 (no preconditioner) below ``MIN_SKETCH_ROWS``."""
    entries = SKETCH_MAX_BYTES // 8
    fitting = int((math.sqrt(parameters * parameters + 4 * entries) - parameters) / 2)  # m(P + m) ≤ entries
    rows = min(requested, n, fitting)
    return rows if rows >= MIN_SKETCH_ROWS else 0


def draw_sketch_rows(curvature: torch.Tensor, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows of the sketch and the square root of each one's weight in Ĝ.

    ``curvature`` holds cᵢ for every training row. With ``rows ≥ n`` every row is taken once,
    weighted |cᵢ|; else ``rows`` are drawn with probability ∝ |cᵢ|, each weighted Σ|c| / rows.
    None when no row has curvature (every prediction saturated).
    """
    magnitude = curvature.abs().detach().cpu().numpy().astype(np.float64)
    total = float(magnitude.sum())
    if not np.isfinite(total) or total <= 0.0:
        return None
    if rows >= magnitude.shape[0]:
        return np.arange(magnitude.shape[0]), np.sqrt(magnitude)
    generator = np.random.default_rng(SKETCH_SEED)
    index = np.sort(generator.choice(magnitude.shape[0], size=rows, replace=True, p=magnitude / total))
    return index, np.full(rows, np.sqrt(total / rows))


def _gram(factor: torch.Tensor) -> torch.Tensor:
    """``U Uᵀ``; on the CPU through numpy, which hands ``A Aᵀ`` to BLAS ``syrk`` (half the flops
    of torch's general product: 0.25 s of a 1024-row sketch of the Adult MLP)."""
    if factor.device.type != "cpu":
        return factor @ factor.T
    values = factor.detach().numpy()
    return torch.from_numpy(values @ values.T)


def _shifted_cholesky(gram: torch.Tensor, shift: float, stage: str) -> torch.Tensor:
    """Lower Cholesky factor of ``σI + UUᵀ``.

    Raises:
        IllConditionedError: σ ≤ 0, or the factorization fails.
    """
    if not shift > 0:
        raise IllConditionedError(f"stage '{stage}': the CG preconditioner needs l2_reg + damping > 0 "
                                  f"(got {shift:.3e}); raise influence.damping")
    shifted = gram.clone()
    shifted.diagonal().add_(shift)
    factored = torch.linalg.cholesky_ex(shifted)
    if int(factored.info) != 0:
        raise IllConditionedError(f"stage '{stage}': the CG preconditioner's Cholesky factorization failed "
                                  f"at pivot {int(factored.info)}; set influence.cg_preconditioner_rows to 0 "
                                  "or raise influence.damping")
    cholesky: torch.Tensor = factored.L
    return cholesky


@dataclass(frozen=True)
class RowSketch:
    """``M⁻¹ = (UᵀU + σI)⁻¹`` by Woodbury, for one shift σ."""

    factor: torch.Tensor
    """U (m × P): the drawn rows' scaled logit gradients, in the dtype applications use."""
    gram: torch.Tensor
    """``UUᵀ`` (m × m, float64, from U in float64)."""
    cholesky: torch.Tensor
    """Lower Cholesky factor of ``σI + UUᵀ`` (m × m, float64)."""
    shift: float
    seconds: float
    """Time taken to build it (gradients, Gram matrix, factorization)."""

    @classmethod
    def build(cls, factor: torch.Tensor, shift: float, stage: str, started: float | None = None,
              apply_dtype: torch.dtype = torch.float64) -> RowSketch:
        """Factorize ``σI + UUᵀ`` for ``factor`` U (float64) and ``shift`` σ > 0; applications
        multiply by U in ``apply_dtype``.

        Raises:
            NonFiniteError: U holds NaN/Inf.
            IllConditionedError: σ ≤ 0, or the Cholesky factorization fails.
        """
        began = time.perf_counter() if started is None else started
        if not bool(torch.isfinite(factor).all()):
            raise NonFiniteError(stage, "the preconditioner's sketch of the Gauss-Newton matrix")
        gram = _gram(factor)
        return cls(factor.to(apply_dtype), gram, _shifted_cholesky(gram, shift, stage), float(shift),
                   time.perf_counter() - began)

    def with_shift(self, shift: float, stage: str) -> RowSketch:
        """The same rows for another σ (the polish's Levenberg-Marquardt shifts)."""
        if shift == self.shift:
            return self
        began = time.perf_counter()
        return RowSketch(self.factor, self.gram, _shifted_cholesky(self.gram, shift, stage), float(shift),
                         time.perf_counter() - began)

    @property
    def rows(self) -> int:
        """m, the sketch's rows."""
        return int(self.factor.shape[0])

    def apply(self, residual: torch.Tensor) -> torch.Tensor:
        """``M⁻¹ r`` (float64 in and out)."""
        sketched = (self.factor @ residual.to(self.factor.dtype)).to(self.cholesky)
        projected = torch.cholesky_solve(sketched.unsqueeze(1), self.cholesky).squeeze(1)
        return (residual - (self.factor.T @ projected.to(self.factor.dtype)).to(residual)) / self.shift

    def describe(self) -> dict[str, Any]:
        """For a solve's diagnostics."""
        return {"kind": "row_sketch", "rows": self.rows, "seconds": self.seconds}
