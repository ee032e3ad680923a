"""Whether a correction met its target, how sure we are, and what else the user should know.

``target_met`` is true only when the audit target reached its goal *and* the change of the
objective's hard-label metric (adaptive robust accuracy for robustness) on the held-out split
(eval, else audit) is outside the noise of its paired bootstrap interval. Warnings carry
machine-readable codes:

| code | when |
|---|---|
| ``target_not_met`` | the audit target did not reach its goal |
| ``change_within_noise`` | the target metric's change lies inside its bootstrap CI of no change |
| ``no_improvement`` | no step passed the guard: the returned model is the input model |
| ``no_adaptive_gain`` | robustness: no real gain against the adaptive attack |
| ``step_undone`` | a step was undone by the guard (reason in the message) |
| ``qp_bound_reached`` | tracking stopped at the qp feasibility bound |
| ``polish_not_applied`` | polishing the head would have changed the model; influence taken about it |
| ``small_group`` | a group has under ``evaluation.min_group_rows`` rows, or no positives/negatives |
| ``few_predictions_changed`` | fewer than ``evaluation.min_changed_predictions`` predictions changed |
| ``accuracy_drop`` | accuracy fell by more than ``ACCURACY_DROP_WARNING`` |
| ``other_gap_worsened`` | another fairness gap rose by more than ``OTHER_GAP_WARNING`` |
| ``prediction_mismatch`` | a step cut the target far more than predicted, or its audit log-loss |
|  | rose more than ``UTILITY_MISMATCH`` beyond the first-order prediction |
| ``sensitive_is_feature`` | the sensitive column is also a model input |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.engine.config import CorrectionSpec
from workers.engine.evaluation.metrics import HARD_METRIC, SplitEvaluation, attack_label, headline_metric
from workers.engine.evaluation.uncertainty import BootstrapConfig, SplitPredictions, paired_bootstrap
from workers.engine.io.datasets import Dataset
from workers.engine.objectives.targets import acceptance_attack
from workers.engine.unlearning.tracking import Tracking

__all__ = ["ACCURACY_DROP_WARNING", "OTHER_GAP_WARNING", "Verdict", "assess"]

ACCURACY_DROP_WARNING = 0.01
"""Accuracy loss (absolute, held-out split) that earns an ``accuracy_drop`` warning."""
OTHER_GAP_WARNING = 0.02
"""Rise of a fairness gap other than the target (absolute, held-out split) that earns a warning."""
MISMATCH_FACTOR = 2.0
"""A step whose realized target change is more than this many times its prediction is flagged."""
UTILITY_MISMATCH = 0.01
"""Audit log-loss (nats) by which a step's realized utility change may exceed its first-order
prediction before it is flagged: the prediction is only first order, and a zero-utility-change
scheme (soft-2.3) still moves the loss at second order."""


@dataclass
class Verdict:
    """The decision part of a report."""

    target_met: bool
    goal_reached: bool
    decision_split: str
    confidence: dict[str, Any]
    warnings: list[dict[str, str]] = field(default_factory=list)

    def warn(self, code: str, message: str) -> None:
        """Add a warning."""
        self.warnings.append({"code": code, "message": message})


def _predictions(evaluation: SplitEvaluation, robust_label: str | None) -> SplitPredictions:
    robust = evaluation.robust_correct.get(robust_label) if robust_label else None
    frozen = evaluation.frozen_correct.get(robust_label) if robust_label else None
    return SplitPredictions(proba=evaluation.proba, robust_correct=robust, frozen_correct=frozen,
                            robust_rows=evaluation.robust_rows if robust is not None else None)


def _confidence(spec: CorrectionSpec, splits: dict[str, Dataset], sensitive: str,
                before: dict[str, SplitEvaluation], after: dict[str, SplitEvaluation]) -> dict[str, Any]:
    attack = acceptance_attack(spec)
    robust_label = attack_label(attack) if attack is not None else None
    if robust_label is None and splits:
        # Fairness objectives with robust evaluation: the interval is of the reported
        # robust_accuracy, the adaptive accuracy under the first (evaluation) attack.
        robust_label = next(iter(before[next(iter(splits))].robust_correct), None)
    config = BootstrapConfig(n_boot=spec.evaluation.n_boot, level=spec.evaluation.ci_level, seed=spec.seed)
    out = {name: paired_bootstrap(data.labels, data.sensitive[sensitive],
                                  _predictions(before[name], robust_label),
                                  _predictions(after[name], robust_label), config)
           for name, data in splits.items()}
    for interval in out.values():
        interval["robust_attack"] = robust_label  # the attack the robust intervals are of
    return out


def _significant(spec: CorrectionSpec, interval: dict[str, Any]) -> tuple[bool, str, dict[str, Any] | None]:
    """Whether the target metric's change is a real improvement, the metric, its change CI."""
    metric = headline_metric(spec.objective.metric)
    change = interval.get(metric, {}).get("change")
    if change is None:
        return False, metric, None
    improved = change["low"] > 0 if metric == "robust_accuracy" else change["high"] < 0
    return bool(improved), metric, change


def _group_warnings(verdict: Verdict, spec: CorrectionSpec, splits: dict[str, Dataset],
                    sensitive: str) -> None:
    minimum = spec.evaluation.min_group_rows
    needs_positives = spec.objective.metric in ("equal_opportunity", "equalized_odds")
    needs_negatives = spec.objective.metric == "equalized_odds"
    for name, data in splits.items():
        groups = data.sensitive[sensitive]
        for group in sorted(set(groups.tolist())):
            rows = groups == group
            count = int(rows.sum())
            if count < minimum:
                verdict.warn("small_group", f"{name}: group {group!r} of {sensitive!r} has {count} rows "
                             f"(fewer than {minimum}): its rates are not stable")
            positives = int(data.labels[rows].sum())
            if needs_positives and positives == 0:
                verdict.warn("small_group", f"{name}: group {group!r} has no positives: its TPR counts as 0 "
                             "(Fairlearn's definition) and no reweighting can change it")
            if needs_negatives and positives == count:
                verdict.warn("small_group", f"{name}: group {group!r} has no negatives: its FPR counts as 0 "
                             "(Fairlearn's definition) and no reweighting can change it")


def _side_effects(verdict: Verdict, spec: CorrectionSpec, before: dict[str, Any],
                  after: dict[str, Any]) -> None:
    target = HARD_METRIC.get(spec.objective.metric)
    drop = before["accuracy"] - after["accuracy"]
    if drop > ACCURACY_DROP_WARNING:
        verdict.warn("accuracy_drop", f"{verdict.decision_split} accuracy fell by {drop:.4f} "
                     f"({before['accuracy']:.4f} -> {after['accuracy']:.4f})")
    for metric in HARD_METRIC.values():
        old, new = before.get(metric), after.get(metric)
        if metric == target or old is None or new is None:
            continue
        if new - old > OTHER_GAP_WARNING:
            verdict.warn("other_gap_worsened", f"{verdict.decision_split} {metric} rose from {old:.4f} to "
                         f"{new:.4f}")


def _tracking_warnings(verdict: Verdict, state: Tracking, polish: dict[str, Any]) -> None:
    for undone in state.undone:
        reason = undone["attempts"][0]["rejected"] if undone["attempts"] else "unknown"
        verdict.warn("step_undone", f"step {undone['iteration']} was undone at every step length; at full "
                     f"length {reason}")
    if not state.records and state.stop_reason == "goal reached":
        verdict.warn("no_improvement", "the input model already meets the goal within "
                     "method.target_tolerance: no step was taken and the model is returned unchanged")
    elif not state.records:
        verdict.warn("no_improvement", "no correction step passed the guard: the returned model is the "
                     "input model, unchanged")
    if state.bound_reached:
        verdict.warn("qp_bound_reached", state.stop_reason)
    for record in state.records:
        predicted, realized = -record["predicted_target_change"], -record["realized_target_change"]
        if predicted > 0 and realized > MISMATCH_FACTOR * predicted:
            verdict.warn("prediction_mismatch", f"step {record['iteration']} reduced the audit target by "
                         f"{realized:.4g}, more than {MISMATCH_FACTOR:g}x the {predicted:.4g} predicted")
        realized_loss, predicted_loss = record["realized_utility_change"], record["predicted_utility_change"]
        if realized_loss - predicted_loss > UTILITY_MISMATCH:
            verdict.warn("prediction_mismatch", f"step {record['iteration']} raised the audit log-loss by "
                         f"{realized_loss:.4f} against {predicted_loss:.4f} predicted (first order): the "
                         "utility cost is a second-order effect the weights could not see")
    if polish.get("exceeded") and not polish.get("applied"):
        verdict.warn("polish_not_applied", str(polish.get("note", "")))


def assess(spec: CorrectionSpec, splits: dict[str, Dataset], train: Dataset, sensitive: str,
           before: dict[str, SplitEvaluation], after: dict[str, SplitEvaluation], state: Tracking,
           final_target: float, polish: dict[str, Any]) -> Verdict:
    """Confidence intervals, ``target_met`` and the warnings of one correction."""
    confidence = _confidence(spec, splits, sensitive, before, after)
    decision = "eval" if "eval" in splits else "audit"
    goal_reached = state.reached(final_target, spec.method.target_tolerance)
    significant, metric, change = _significant(spec, confidence[decision])
    verdict = Verdict(target_met=False, goal_reached=goal_reached, decision_split=decision,
                      confidence=confidence)
    if not goal_reached:
        verdict.warn("target_not_met", f"the audit target reached {abs(final_target):.4g}, not the goal "
                     f"{state.goal:.4g} ({state.stop_reason})")
    if change is not None and not significant:
        code = "no_adaptive_gain" if metric == "robust_accuracy" else "change_within_noise"
        verdict.warn(code, f"{decision} {metric} changed by {change['estimate']:+.4f}, "
                     f"{spec.evaluation.ci_level:.0%} CI [{change['low']:+.4f}, {change['high']:+.4f}]: "
                     "not distinguishable from no change")
    verdict.target_met = goal_reached and significant and bool(state.records)
    _tracking_warnings(verdict, state, polish)
    _group_warnings(verdict, spec, {"train": train, **splits}, sensitive)
    changed = confidence[decision].get("predictions_changed")
    if changed is not None and bool(state.records) and changed < spec.evaluation.min_changed_predictions:
        verdict.warn("few_predictions_changed", f"only {changed} {decision} predictions changed (fewer than "
                     f"{spec.evaluation.min_changed_predictions}): the change rests on very few rows")
    _side_effects(verdict, spec, before[decision].metrics, after[decision].metrics)
    if sensitive in train.feature_names:
        verdict.warn("sensitive_is_feature", f"the sensitive column {sensitive!r} is also a model input")
    return verdict

