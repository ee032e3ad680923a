"""The rows of a split that robust accuracy is measured on (``evaluation.robust_sample_rows``).

An attack costs its steps' forward and backward passes on every row it attacks, for every model
scored (before, after, each frontier point), so a large split is attacked on a seeded sample.
The sample is stratified by sensitive group with proportional (largest-remainder) allocation, so
the groups keep their shares; it is drawn once per split and shared by every model, which keeps
the before/after comparison paired. The bootstrap then resamples the sample's rows within their
groups (:mod:`workers.engine.evaluation.uncertainty`), so the robust intervals carry the
sampling noise of the sample's size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["RobustSample", "draw_robust_sample"]


@dataclass(frozen=True)
class RobustSample:
    """The attacked rows of one split: ``rows`` (sorted indices; None for every row)."""

    rows: np.ndarray | None
    split_rows: int
    seed: int

    @property
    def size(self) -> int:
        """How many rows are attacked."""
        return self.split_rows if self.rows is None else int(self.rows.shape[0])

    def take(self, values: np.ndarray) -> np.ndarray:
        """The sampled rows of a per-row array (the array itself for every row)."""
        taken: np.ndarray = values if self.rows is None else values[self.rows]
        return taken

    def describe(self) -> dict[str, int | bool]:
        """What the report says of the sample."""
        return {"rows": self.size, "split_rows": self.split_rows, "sampled": self.rows is not None,
                "seed": self.seed}


def _allocation(sizes: np.ndarray, total: int) -> np.ndarray:
    """Rows per group, proportional to ``sizes`` and summing to ``total`` (largest remainder)."""
    exact = sizes * (total / sizes.sum())
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    bounded: np.ndarray = np.minimum(counts, sizes)
    return bounded


def draw_robust_sample(groups: np.ndarray, size: int | None, seed: int, split: str) -> RobustSample:
    """A sample of ``size`` rows stratified by ``groups`` (every row when ``size`` is None or not
    below the split's rows), seeded by the job's ``seed`` and the split's name."""
    n = int(groups.shape[0])
    if size is None or size >= n:
        return RobustSample(None, n, seed)
    names, codes = np.unique(groups, return_inverse=True)
    counts = _allocation(np.bincount(codes, minlength=names.size), size)
    rng = np.random.default_rng([seed % 2**63, zlib.crc32(split.encode())])
    chosen = [rng.choice(np.flatnonzero(codes == g), size=int(k), replace=False)
              for g, k in enumerate(counts) if k > 0]
    return RobustSample(np.sort(np.concatenate(chosen)), n, seed)
