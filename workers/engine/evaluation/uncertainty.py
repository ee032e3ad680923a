"""Paired bootstrap confidence intervals for before/after evaluation metrics.

A correction is audited on one evaluation split, so every reported number (and every change
after − before) carries sampling noise. We estimate it with a paired percentile bootstrap: each
replication draws the split's rows with replacement, both models are scored on that same
resample, and the change is taken on it, so the noise the two models share (which rows are hard)
cancels instead of widening the interval. Intervals are the (1 − level)/2 and (1 + level)/2
quantiles of the replications; a change whose interval contains 0 is ``within_noise``.

Rows are resampled within each sensitive group, keeping every group's size fixed. The group
sizes are design quantities of the audit (who was sampled), not an outcome of the models, and a
fixed-size resample can never empty a group, which would change which groups the fairness
differences compare.

Every metric of a replication is a function of per-group sums of per-row columns (correct,
predicted positive, true positive, ...), so a block of replications is one matrix of resample
counts per group times those columns; blocks bound memory so million-row splits stay cheap.
The metric definitions are those of ``classification_metrics`` (Fairlearn's, empty rates 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.engine.evaluation.metrics import LOG_EPS, classification_metrics

__all__ = ["BootstrapConfig", "SplitPredictions", "paired_bootstrap"]

METHOD = "paired percentile bootstrap, resampled within each sensitive group"
BASE_METRICS = ("accuracy", "log_loss", "demographic_parity_difference", "equal_opportunity_difference",
                "equalized_odds_difference")
# Bytes of one (replications × group rows) array; a block holds about three of them at once.
BLOCK_BYTES = 16 * 2**20
# Per-row columns summed per group, for each of before and after.
_CORRECT, _LOSS, _SELECTED, _TRUE_POS, _FALSE_POS, _ROBUST, _FROZEN = range(7)
_PER_MODEL = 7


@dataclass(frozen=True)
class BootstrapConfig:
    """How many replications, the interval's coverage level and the random seed."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class SplitPredictions:
    """One model's outputs on the split: P(y=1) and, optionally, correctness under attack
    (adaptive: crafted against this model; frozen: the attack crafted against the input model)."""

    proba: np.ndarray
    robust_correct: np.ndarray | None = None
    frozen_correct: np.ndarray | None = None
    robust_rows: np.ndarray | None = None
    """The rows (indices into the split) ``robust_correct``/``frozen_correct`` are of: the robust
    sample (``evaluation.robust_sample_rows``); None for every row."""


def _robust_rows(before: SplitPredictions, after: SplitPredictions, n: int) -> np.ndarray | None:
    """The robust rows both models were attacked on (they must be the same: the change is paired)."""
    rows = before.robust_rows
    other = after.robust_rows
    if rows is None or other is None:
        if (rows is None) != (other is None):
            raise ValueError("before and after must be attacked on the same robust rows")
        return None
    if not np.array_equal(rows, other):
        raise ValueError("before and after must be attacked on the same robust rows")
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= n)):
        raise ValueError(f"robust_rows must be indices into the {n} rows")
    return rows


def _validate(labels: np.ndarray, groups: np.ndarray, before: SplitPredictions, after: SplitPredictions,
              config: BootstrapConfig) -> None:
    n = labels.shape[0]
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one row")
    rows = _robust_rows(before, after, n)
    robust_n = n if rows is None else rows.shape[0]
    arrays = {"groups": (groups, n), "before.proba": (before.proba, n), "after.proba": (after.proba, n),
              "before.robust_correct": (before.robust_correct, robust_n),
              "after.robust_correct": (after.robust_correct, robust_n),
              "before.frozen_correct": (before.frozen_correct, robust_n),
              "after.frozen_correct": (after.frozen_correct, robust_n)}
    for name, (values, size) in arrays.items():
        if values is not None and values.shape != (size,):
            raise ValueError(f"{name} has shape {values.shape}, expected ({size},)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not 0 < config.level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {config.level}")
    if not 100 <= config.n_boot <= 100_000:
        raise ValueError(f"n_boot must be between 100 and 100000, got {config.n_boot}")


def _model_columns(labels: np.ndarray, prediction: SplitPredictions) -> np.ndarray:
    """Per-row columns of one model; the robust ones are zero unless measured on every row (a
    robust sample is resampled on its own, :func:`_robust_replications`)."""
    selected = (prediction.proba >= 0.5).astype(np.float64)
    clipped = np.clip(prediction.proba, LOG_EPS, 1 - LOG_EPS)
    loss = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    on_every_row = prediction.robust_rows is None
    robust = prediction.robust_correct if on_every_row and prediction.robust_correct is not None \
        else np.zeros_like(labels)
    frozen = prediction.frozen_correct if on_every_row and prediction.frozen_correct is not None \
        else np.zeros_like(labels)
    return np.column_stack([(selected == labels), loss, selected, selected * labels,
                            selected * (1 - labels), robust, frozen]).astype(np.float64)


def _resampled_sums(columns: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, k) sums of ``columns`` over resamples of its rows with replacement."""
    size = columns.shape[0]
    block = max(1, min(n_boot, BLOCK_BYTES // (8 * size)))
    sums = np.empty((n_boot, columns.shape[1]))
    for start in range(0, n_boot, block):
        reps = min(block, n_boot - start)
        draws = rng.integers(0, size, size=(reps, size))
        draws += np.arange(reps)[:, None] * size
        counts = np.bincount(draws.ravel(), minlength=reps * size).reshape(reps, size)
        sums[start:start + reps] = counts @ columns
    return sums


def _group_sums(labels: np.ndarray, codes: np.ndarray, n_groups: int, columns: np.ndarray,
                n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_groups, k) per-group sums; the last column is the group's positives."""
    table = np.column_stack([columns, labels])
    return np.stack([_resampled_sums(table[codes == g], n_boot, rng) for g in range(n_groups)], axis=1)


def _robust_replications(codes: np.ndarray, before: SplitPredictions, after: SplitPredictions,
                         config: BootstrapConfig) -> list[dict[str, np.ndarray]]:
    """Robust accuracies of each model per replication, resampling the robust sample's rows
    within their groups (an independent stream of the same seed)."""
    rows = before.robust_rows
    assert rows is not None
    sample_codes = codes[rows]
    outcomes = [p.robust_correct if p.robust_correct is not None else np.zeros(rows.shape[0])
                for p in (before, after)]
    frozen = [p.frozen_correct if p.frozen_correct is not None else np.zeros(rows.shape[0])
              for p in (before, after)]
    columns = np.column_stack([*outcomes, *frozen]).astype(np.float64)
    rng = np.random.default_rng([config.seed % 2**63, 1])
    sums = np.zeros((config.n_boot, columns.shape[1]))
    for group in np.unique(sample_codes):
        sums += _resampled_sums(columns[sample_codes == group], config.n_boot, rng)
    sums /= max(rows.shape[0], 1)
    return [{"robust_accuracy": sums[:, model], "robust_accuracy_frozen": sums[:, 2 + model]}
            for model in (0, 1)]


def _rate(hits: np.ndarray, totals: np.ndarray) -> np.ndarray:
    # A group with no rows of the class has rate 0, as in classification_metrics (Fairlearn).
    rates: np.ndarray = np.divide(hits, totals, out=np.zeros_like(hits), where=totals > 0)
    return rates


def _spread(rates: np.ndarray) -> np.ndarray:
    spread: np.ndarray = rates.max(axis=1) - rates.min(axis=1)
    return spread


def _replicate_metrics(sums: np.ndarray, sizes: np.ndarray, model: int) -> dict[str, np.ndarray]:
    """Every metric of one model (0 before, 1 after) for each replication."""
    own = sums[:, :, model * _PER_MODEL:(model + 1) * _PER_MODEL]
    positives = sums[:, :, -1]
    negatives = sizes - positives
    n = sizes.sum()
    tpr_diff = _spread(_rate(own[:, :, _TRUE_POS], positives))
    fpr_diff = _spread(_rate(own[:, :, _FALSE_POS], negatives))
    return {
        "accuracy": own[:, :, _CORRECT].sum(axis=1) / n,
        "log_loss": own[:, :, _LOSS].sum(axis=1) / n,
        "demographic_parity_difference": _spread(own[:, :, _SELECTED] / sizes),
        "equal_opportunity_difference": tpr_diff,
        "equalized_odds_difference": np.maximum(tpr_diff, fpr_diff),
        "robust_accuracy": own[:, :, _ROBUST].sum(axis=1) / n,
        "robust_accuracy_frozen": own[:, :, _FROZEN].sum(axis=1) / n,
    }


def _point_estimates(labels: np.ndarray, groups: np.ndarray, prediction: SplitPredictions,
                     ) -> dict[str, float]:
    metrics = classification_metrics(prediction.proba, labels, groups)
    out = {name: float(metrics[name]) for name in BASE_METRICS}
    if prediction.robust_correct is not None:
        out["robust_accuracy"] = float(np.mean(prediction.robust_correct))
    if prediction.frozen_correct is not None:
        out["robust_accuracy_frozen"] = float(np.mean(prediction.frozen_correct))
    return out


def _interval(estimate: float, replications: np.ndarray, level: float) -> dict[str, Any]:
    low, high = np.quantile(replications, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def _summarise(before: float, after: float, reps_before: np.ndarray, reps_after: np.ndarray,
               level: float) -> dict[str, Any]:
    change = _interval(after - before, reps_after - reps_before, level)
    change["within_noise"] = bool(change["low"] <= 0 <= change["high"])
    return {"before": _interval(before, reps_before, level), "after": _interval(after, reps_after, level),
            "change": change}


def paired_bootstrap(labels: np.ndarray, groups: np.ndarray, before: SplitPredictions,
                     after: SplitPredictions, config: BootstrapConfig) -> dict[str, Any]:
    """Percentile intervals for each metric before, after and of the paired change.

    Point estimates are ``classification_metrics``' values (and the means of ``robust_correct``
    and ``frozen_correct``, each reported when both models have it). The result is JSON-serialisable.
    """
    _validate(labels, groups, before, after, config)
    labels = np.asarray(labels, dtype=np.float64)
    names, codes = np.unique(groups, return_inverse=True)
    sizes = np.bincount(codes, minlength=names.size).astype(np.float64)
    columns = np.column_stack([_model_columns(labels, before), _model_columns(labels, after)])
    rng = np.random.default_rng(config.seed)
    sums = _group_sums(labels, codes, names.size, columns, config.n_boot, rng)
    reps = [_replicate_metrics(sums, sizes, model) for model in (0, 1)]
    if before.robust_rows is not None:
        for own, on_sample in zip(reps, _robust_replications(codes, before, after, config), strict=True):
            own.update(on_sample)
    points = [_point_estimates(labels, groups, p) for p in (before, after)]
    robust = before.robust_correct is not None and after.robust_correct is not None
    frozen = before.frozen_correct is not None and after.frozen_correct is not None
    reported = (*BASE_METRICS, *(("robust_accuracy",) if robust else ()),
                *(("robust_accuracy_frozen",) if frozen else ()))
    out: dict[str, Any] = {name: _summarise(points[0][name], points[1][name], reps[0][name], reps[1][name],
                                            config.level) for name in reported}
    if robust or frozen:
        rows = before.robust_rows
        out["robust_rows"] = labels.shape[0] if rows is None else int(rows.shape[0])
    out.update({"n_boot": config.n_boot, "level": config.level, "seed": config.seed, "method": METHOD,
                "predictions_changed": int(((before.proba >= 0.5) != (after.proba >= 0.5)).sum())})
    return out
