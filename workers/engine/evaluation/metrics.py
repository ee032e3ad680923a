"""Before/after evaluation: utility, hard-label fairness (Fairlearn definitions), surrogates, robustness.

Fairness differences are max − min over groups of the selection rate (demographic parity), the
true-positive rate (equal opportunity) and max(TPR difference, FPR difference) (equalized odds),
as ``fairlearn.metrics`` defines them. As in Fairlearn (scikit-learn's row-normalised confusion
matrix with nan read as 0), a group without positives (negatives) enters the TPR (FPR) comparison
with a rate of 0, and a split with a single group has differences of 0; the per-group table still
reports such a rate as null, next to the group's positive and negative counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from workers.engine.config import AttackConfig
from workers.engine.evaluation.robust_sample import RobustSample, draw_robust_sample
from workers.engine.io.datasets import Dataset
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.attacks import attack_inputs, reflect_linear
from workers.engine.objectives.surrogates import GroupGap

__all__ = ["HARD_METRIC", "SplitContext", "SplitEvaluation", "attack_label", "classification_metrics",
           "evaluate_split", "headline_metric"]

HARD_METRIC = {
    "demographic_parity": "demographic_parity_difference",
    "equal_opportunity": "equal_opportunity_difference",
    "equalized_odds": "equalized_odds_difference",
}
"""The hard-label report metric of each fairness objective (Fairlearn's definitions)."""


def headline_metric(objective: str) -> str:
    """The report metric that says whether ``objective`` improved (robustness: adaptive robust accuracy)."""
    return HARD_METRIC.get(objective, "robust_accuracy")


LOG_EPS = 1e-12


def _rate(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _rate_or_zero(rate: float | None) -> float:
    # Fairlearn's rates come from confusion_matrix(normalize="true"), whose empty rows are nan → 0.
    return 0.0 if rate is None else rate


def _spread(values: list[float]) -> float | None:
    return float(max(values) - min(values)) if values else None


def _worse(first: float | None, second: float | None) -> float | None:
    return None if first is None or second is None else max(first, second)


def _group_row(y: np.ndarray, yhat: np.ndarray) -> dict[str, Any]:
    positives = int((y == 1).sum())
    return {
        "n": int(y.shape[0]),
        "positives": positives,
        "negatives": int(y.shape[0]) - positives,
        "selection_rate": _rate(yhat),
        "tpr": _rate(yhat[y == 1]),
        "fpr": _rate(yhat[y == 0]),
        "accuracy": _rate((yhat == y).astype(np.float64)),
    }


def classification_metrics(proba: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Accuracy, log-loss, hard-label fairness differences and the per-group table.

    The three differences equal ``fairlearn.metrics`` ``demographic_parity_difference``,
    ``equal_opportunity_difference`` and ``equalized_odds_difference`` (``agg="worst_case"``) of
    the labels at threshold 0.5; they are null only for an empty split.
    """
    predicted = (proba >= 0.5).astype(np.float64)
    clipped = np.clip(proba, LOG_EPS, 1 - LOG_EPS)
    masks = {str(group): groups == group for group in sorted(set(groups.tolist()))}
    table = {name: _group_row(labels[rows], predicted[rows]) for name, rows in masks.items()}
    tpr_diff = _spread([_rate_or_zero(row["tpr"]) for row in table.values()])
    fpr_diff = _spread([_rate_or_zero(row["fpr"]) for row in table.values()])
    return {
        "n": int(labels.shape[0]),
        "accuracy": float((predicted == labels).mean()),
        "log_loss": float(-(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).mean()),
        "demographic_parity_difference": _spread([row["selection_rate"] for row in table.values()]),
        "equal_opportunity_difference": tpr_diff,
        "equalized_odds_difference": _worse(tpr_diff, fpr_diff),
        "groups": table,
    }


def attack_label(config: AttackConfig) -> str:
    """A short name such as ``pgd-linf-0.1`` or ``reflect_linear-1.3``."""
    if config.kind == "reflect_linear":
        return f"reflect_linear-k{config.kappa:g}"
    return f"{config.kind}-{config.norm}-{config.epsilon:g}"


@dataclass
class SplitContext:
    """One split prepared once: data, sensitive groups, the rows robust accuracy is measured on
    and the attacks crafted against the original model on them (the frozen sets: inputs for
    FGSM/PGD, the original head for reflection)."""

    data: Dataset
    groups: np.ndarray
    privileged: str | None
    attacks: list[AttackConfig]
    robust: RobustSample
    early_stop: bool = False
    """Whether FGSM/PGD stop on a row once it is misclassified (``evaluation.robust_early_stop``)."""
    frozen: dict[str, np.ndarray | torch.Tensor] = field(default_factory=dict)
    gaps: dict[str, tuple[torch.Tensor, GroupGap | None]] = field(default_factory=dict)
    """Surrogate gaps per metric with the design they were built on (reused by head variants)."""

    @classmethod
    def prepare(cls, model: HeadModel, data: Dataset, sensitive: str, privileged: str | None,
                attacks: list[AttackConfig], robust: RobustSample | None = None,
                early_stop: bool = False) -> SplitContext:
        """Craft each attack against the original ``model`` on the ``robust`` rows (every row
        when None), with all its steps."""
        groups = data.sensitive[sensitive]
        robust = robust or RobustSample(None, data.n, 0)
        context = cls(data, groups, privileged, attacks, robust, early_stop)
        model.keep_design(data.features)
        for config in attacks:
            if config.kind == "reflect_linear":
                context.frozen[attack_label(config)] = model.theta()
            else:
                # The frozen set takes every step: stopped early, its points would sit just
                # across the input model's boundary and say little of any other model.
                context.frozen[attack_label(config)] = attack_inputs(
                    model, context.robust_features, context.robust_labels, config)
        return context

    def subsampled(self, size: int | None) -> SplitContext:
        """This split with robust accuracy measured on ``size`` of its robust rows (a seeded
        subsample stratified by group; the context itself when ``size`` is None or not below the
        robust rows). The frozen sets are those rows' of the original; the gap cache is shared."""
        if size is None or size >= self.robust.size:
            return self
        nested = draw_robust_sample(self.robust.take(self.groups), size, self.robust.seed,
                                    f"{self.data.name}/subsample")
        assert nested.rows is not None
        rows = nested.rows if self.robust.rows is None else self.robust.rows[nested.rows]
        frozen = {label: attacked if isinstance(attacked, torch.Tensor) else attacked[nested.rows]
                  for label, attacked in self.frozen.items()}
        return replace(self, robust=RobustSample(rows, self.robust.split_rows, self.robust.seed),
                                   frozen=frozen, gaps=self.gaps)

    @cached_property
    def robust_features(self) -> np.ndarray:
        """The inputs of the rows robust accuracy is measured on."""
        return self.robust.take(self.data.features)

    @cached_property
    def robust_labels(self) -> np.ndarray:
        """The labels of the rows robust accuracy is measured on."""
        return self.robust.take(self.data.labels)


def _robust_accuracy(model: HeadModel, design: torch.Tensor, context: SplitContext,
                     config: AttackConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Robust accuracy against the frozen and the adaptive attack on the context's robust rows;
    per-row adaptive and frozen correctness there."""
    labels = context.robust_labels
    frozen = context.frozen[attack_label(config)]
    theta = model.theta()
    if isinstance(frozen, torch.Tensor):
        rows = design if context.robust.rows is None else design[torch.from_numpy(context.robust.rows)
                                                                 .to(design.device)]
        frozen_pred = (reflect_linear(rows, frozen, config.kappa) @ theta).cpu().numpy() >= 0
        adaptive_pred = (reflect_linear(rows, theta, config.kappa) @ theta).cpu().numpy() >= 0
    else:
        frozen_pred = model.logits(frozen).cpu().numpy() >= 0
        adversarial = attack_inputs(model, context.robust_features, labels, config, context.early_stop)
        adaptive_pred = model.logits(adversarial).cpu().numpy() >= 0
    adaptive_correct = adaptive_pred == (labels == 1)
    frozen_correct = frozen_pred == (labels == 1)
    summary = {
        "attack": {"kind": config.kind, "norm": config.norm, "epsilon": config.epsilon,
                   "steps": config.steps, "kappa": config.kappa},
        "frozen": float(frozen_correct.mean()),
        "adaptive": float(adaptive_correct.mean()),
        **context.robust.describe(),
        "early_stopping": context.early_stop and config.kind != "reflect_linear",
    }
    return summary, adaptive_correct, frozen_correct


def _gap(metric: str, design: torch.Tensor, context: SplitContext) -> GroupGap | None:
    """The split's gap surrogate of ``metric`` on ``design`` (None where a group has no rows)."""
    cached = context.gaps.get(metric)
    if cached is not None and cached[0] is design:
        return cached[1]
    try:
        gap: GroupGap | None = GroupGap.build(metric, design, context.data.labels, context.groups,
                                              context.privileged, context.data.name)
    except ValueError:
        gap = None
    context.gaps[metric] = (design, gap)
    return gap


def _surrogates(logits: torch.Tensor, design: torch.Tensor, context: SplitContext,
                ) -> dict[str, float | None]:
    """The split's gap surrogates from its head logits Φθ."""
    out: dict[str, float | None] = {}
    for metric in ("demographic_parity", "equal_opportunity", "equalized_odds"):
        gap = _gap(metric, design, context)
        out[metric] = None if gap is None else gap.value_at(logits)
    return out


@dataclass
class SplitEvaluation:
    """Every before/after number of one model on one split, and the per-row outcomes behind
    them (for the bootstrap)."""

    metrics: dict[str, Any]
    proba: np.ndarray
    robust_rows: np.ndarray | None = None
    """The rows ``robust_correct`` and ``frozen_correct`` are of (None: every row)."""
    robust_correct: dict[str, np.ndarray] = field(default_factory=dict)
    """Adaptive correctness per robust row, by attack label."""
    frozen_correct: dict[str, np.ndarray] = field(default_factory=dict)
    """Correctness per row under the attack crafted against the input model, by attack label."""


def evaluate_split(model: HeadModel, context: SplitContext) -> SplitEvaluation:
    """Every before/after number for one model on one split."""
    design = model.design(context.data.features)
    products = design @ model.theta()
    # For a kept split the head logits are this very product (HeadModel.head_logits).
    logits = products if model.keeps(context.data.features) else model.head_logits(context.data.features)
    proba = torch.sigmoid(logits).cpu().numpy()
    metrics = classification_metrics(proba, context.data.labels, context.groups)
    metrics["surrogates"] = _surrogates(products, design, context)
    evaluation = SplitEvaluation(metrics, proba, context.robust.rows)
    if context.attacks:
        robustness = {}
        for config in context.attacks:
            label = attack_label(config)
            robustness[label], evaluation.robust_correct[label], evaluation.frozen_correct[label] = \
                _robust_accuracy(model, design, context, config)
        primary = robustness[attack_label(context.attacks[0])]
        metrics["robust_accuracy"] = primary["adaptive"]
        metrics["robust_accuracy_frozen"] = primary["frozen"]
        metrics["robustness"] = robustness
    return evaluation
