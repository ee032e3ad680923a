"""Differentiable audit targets of the head, all as means over the audit set (METHOD.md §4, §9.10).

Each objective maps head parameters θ to a signed value and its gradient:

* utility: mean log-loss;
* demographic parity: gap in mean predicted probability between two groups;
* equal opportunity: the same among positives (a soft true-positive-rate gap);
* equalized odds: |soft TPR gap| + |soft FPR gap|;
* robustness: mean log-loss on a frozen adversarial copy of the audit points.

Group gaps are ``privileged − rest`` when a privileged group is named (and may be negative: the
pipeline orients by the sign so that a correction always shrinks |gap|), else between the groups
with the highest and the lowest mean at the current θ (non-negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from workers.engine.errors import DatasetError

__all__ = ["GroupGap", "MeanLogLoss", "Objective", "group_masks"]


class Objective(Protocol):
    """A differentiable function of the head parameters."""

    @property
    def name(self) -> str:
        """What the objective measures."""

    def evaluate(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Signed value and gradient at ``theta``."""

    def value(self, theta: torch.Tensor) -> float:
        """The value of :meth:`evaluate` alone (no gradient product)."""


@dataclass
class MeanLogLoss:
    """Mean binary log-loss of the head on a design matrix (utility, or robustness when the
    design holds frozen adversarial points)."""

    design: torch.Tensor
    labels: torch.Tensor
    name: str = "utility"

    def evaluate(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Mean log-loss and its gradient Φᵀ(p − y)/n."""
        logits = self.design @ theta
        value = float(F.binary_cross_entropy_with_logits(logits, self.labels))
        grad = self.design.T @ (torch.sigmoid(logits) - self.labels) / self.labels.shape[0]
        return value, grad

    def value(self, theta: torch.Tensor) -> float:
        """Mean log-loss alone."""
        return float(F.binary_cross_entropy_with_logits(self.design @ theta, self.labels))


def group_masks(groups: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Boolean row mask per distinct group value."""
    return {
        str(value): torch.from_numpy(groups == value).to(device)
        for value in sorted(set(groups.tolist()))
    }


@dataclass
class _Gap:
    """One soft-rate gap over rows selected by ``condition`` (all rows, y=1 or y=0).

    Each group's rows of the design are gathered once, on the first :meth:`evaluate` or
    :meth:`value`: evaluating the gap at a new θ is then two products per group, without
    re-indexing the design. :meth:`value_at` needs only the row numbers, so evaluation, which
    only reads values off the split's logits, never gathers (≈ 2.4 copies of a split's design
    for the three metrics)."""

    design: torch.Tensor
    privileged: str | None
    rows: dict[str, torch.Tensor]
    """Each group's row numbers in the split."""

    @cached_property
    def groups(self) -> dict[str, torch.Tensor]:
        """Each group's rows of the design."""
        return {name: self.design[index] for name, index in self.rows.items()}

    @staticmethod
    def _mean_and_grad(theta: torch.Tensor, phi: torch.Tensor) -> tuple[float, torch.Tensor]:
        p = torch.sigmoid(phi @ theta)
        return float(p.mean()), phi.T @ (p * (1 - p)) / phi.shape[0]

    def _ends(self, means: dict[str, float]) -> tuple[str, str]:
        """The two groups the gap is between: privileged and the rest, else the extremes."""
        if self.privileged is not None:
            return self.privileged, _REST
        return max(means, key=means.__getitem__), min(means, key=means.__getitem__)

    def evaluate(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        stats = {name: self._mean_and_grad(theta, phi) for name, phi in self.groups.items()}
        top, bottom = self._ends({name: stat[0] for name, stat in stats.items()})
        return stats[top][0] - stats[bottom][0], stats[top][1] - stats[bottom][1]

    def value(self, theta: torch.Tensor) -> float:
        means = {name: float(torch.sigmoid(phi @ theta).mean()) for name, phi in self.groups.items()}
        top, bottom = self._ends(means)
        return means[top] - means[bottom]

    def value_at(self, logits: torch.Tensor) -> float:
        """:meth:`value` from the split's logits Φθ, computed once for every gap."""
        means = {name: float(torch.sigmoid(logits[rows]).mean()) for name, rows in self.rows.items()}
        top, bottom = self._ends(means)
        return means[top] - means[bottom]


_REST = "\x00rest"
"""The key of the non-privileged rows, when a privileged group is named (never a group label:
labels are the data's strings, and this one holds a NUL)."""


def _conditioned(design: torch.Tensor, groups: np.ndarray, keep: np.ndarray, privileged: str | None,
                 what: str, split: str) -> _Gap:
    kept_groups = groups[keep]
    present = set(kept_groups.tolist())
    if len(present) < 2:
        raise DatasetError(f"{split}: {what} needs at least two groups with rows; found {sorted(present)}")
    if privileged is not None and privileged not in present:
        raise DatasetError(f"{split}: privileged group {privileged!r} has no rows for {what}")
    if privileged is not None:
        chosen = groups == privileged
        selections = {privileged: keep & chosen, _REST: keep & ~chosen}
    else:
        selections = {str(value): keep & (groups == value) for value in sorted(present)}
    rows = {name: torch.from_numpy(np.flatnonzero(selected)).to(design.device)
            for name, selected in selections.items()}
    return _Gap(design, privileged, rows)


@dataclass
class GroupGap:
    """A fairness gap surrogate: demographic parity, equal opportunity or equalized odds."""

    metric: str
    gaps: list[_Gap]

    @property
    def name(self) -> str:
        """The fairness metric."""
        return self.metric

    @classmethod
    def build(cls, metric: str, design: torch.Tensor, labels: np.ndarray, groups: np.ndarray,
              privileged: str | None, split: str) -> GroupGap:
        """Set up the gap(s) of ``metric`` on one split.

        Raises:
            DatasetError: a needed group has no rows (e.g. no positives for equal opportunity).
        """
        if privileged is not None and privileged not in set(groups.tolist()):
            raise DatasetError(f"privileged group {privileged!r} is not a value of the sensitive "
                               f"attribute; values are {sorted(set(groups.tolist()))}")
        everyone = np.ones(labels.shape[0], dtype=bool)
        positives, negatives = labels == 1, labels == 0
        if metric == "demographic_parity":
            gaps = [_conditioned(design, groups, everyone, privileged, "demographic parity", split)]
        elif metric == "equal_opportunity":
            gaps = [_conditioned(design, groups, positives, privileged, "equal opportunity", split)]
        else:
            gaps = [
                _conditioned(design, groups, positives, privileged, "equalized odds (TPR)", split),
                _conditioned(design, groups, negatives, privileged, "equalized odds (FPR)", split),
            ]
        return cls(metric=metric, gaps=gaps)

    def evaluate(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The gap (signed for one gap; |TPR gap| + |FPR gap| for equalized odds) and gradient."""
        if len(self.gaps) == 1:
            return self.gaps[0].evaluate(theta)
        value, grad = 0.0, torch.zeros_like(theta)
        for gap in self.gaps:
            part, part_grad = gap.evaluate(theta)
            sign = 1.0 if part >= 0 else -1.0
            value += sign * part
            grad = grad + sign * part_grad
        return value, grad

    def value(self, theta: torch.Tensor) -> float:
        """The gap of :meth:`evaluate` alone."""
        if len(self.gaps) == 1:
            return self.gaps[0].value(theta)
        return sum(abs(gap.value(theta)) for gap in self.gaps)

    def value_at(self, logits: torch.Tensor) -> float:
        """:meth:`value` from the split's logits Φθ (one product shared by every metric)."""
        if len(self.gaps) == 1:
            return self.gaps[0].value_at(logits)
        return sum(abs(gap.value_at(logits)) for gap in self.gaps)
