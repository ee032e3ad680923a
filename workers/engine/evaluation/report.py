"""The correction report: JSON with the keys PRODUCT.md fixes, and its plain-text summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workers.engine.config import CorrectionSpec
from workers.engine.evaluation.metrics import headline_metric
from workers.engine.weights import WeightResult

if TYPE_CHECKING:
    from workers.engine.evaluation.verdict import Verdict
    from workers.engine.io.inputs import CorrectionInputs
    from workers.engine.unlearning.frontier import Frontier
    from workers.engine.unlearning.tracking import Measurement, Tracking

__all__ = ["REPORT_VERSION", "build_report", "format_summary"]

REPORT_VERSION = 3
HEADLINE = ("accuracy", "log_loss", "demographic_parity_difference", "equal_opportunity_difference",
            "equalized_odds_difference", "robust_accuracy", "robust_accuracy_frozen")


def _weights_summary(final_eps: np.ndarray, solved: list[WeightResult], spec: CorrectionSpec,
                     ) -> dict[str, Any]:
    total = WeightResult(
        eps=final_eps,
        scheme=spec.weighting.scheme,
        requested_reduction=sum(r.requested_reduction for r in solved),
        predicted_target_change=sum(r.predicted_target_change for r in solved),
        predicted_utility_change=sum(r.predicted_utility_change for r in solved),
        feasible=all(r.feasible for r in solved),
        max_reduction=solved[0].max_reduction if solved else None,
    )
    bounds = (spec.weighting.lower, spec.weighting.upper) if spec.weighting.scheme == "qp" else (None, None)
    summary = total.summary(*bounds)
    summary["iterations"] = [r.summary(*bounds) for r in solved]
    for row in summary["iterations"]:
        row.pop("notes", None)
    summary["histogram"] = _histogram(1.0 + final_eps)
    return summary


HISTOGRAM_BINS = 40


def _histogram(effective: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Counts of the effective weights 1 + ε in equal bins over their range."""
    low, high = (float(effective.min()), float(effective.max())) if effective.size else (1.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(effective, bins=HISTOGRAM_BINS, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _predicted(iterations: list[dict[str, Any]]) -> dict[str, Any]:
    if not iterations:
        return {"target_change": 0.0, "utility_change": 0.0, "realized_target_change": 0.0,
                "realized_utility_change": 0.0, "iterations": []}
    first, last = iterations[0], iterations[-1]
    return {
        "target_change": sum(row["predicted_target_change"] for row in iterations),
        "utility_change": sum(row["predicted_utility_change"] for row in iterations),
        "realized_target_change": abs(last["target_after"]) - abs(first["target_before"]),
        "realized_utility_change": last["utility_after"] - first["utility_before"],
        "first_step": {
            "predicted_target_change": first["predicted_target_change"],
            "realized_target_change": first["realized_target_change"],
            "predicted_utility_change": first["predicted_utility_change"],
            "realized_utility_change": first["realized_utility_change"],
        },
        "iterations": iterations,
    }


SURROGATES = {
    "demographic_parity": "the gap in mean predicted probability between the groups",
    "equal_opportunity": "the gap in mean predicted probability among positives (a soft TPR gap)",
    "equalized_odds": "the soft TPR gap plus the soft FPR gap",
    "robustness": "the mean log-loss on the audit points under the attack",
}
"""What the differentiable surrogate of each objective is (the influence is taken on it)."""


def _headline(section: dict[str, Any], verdict: Verdict, spec: CorrectionSpec) -> str:
    """One sentence: the hard-label metric the user asked for, on the decision split, with its CI."""
    split, metric = section["decision_split"], section["hard_metric"]
    before, after = section["eval_hard_before"], section["eval_hard_after"]
    change = verdict.confidence.get(split, {}).get(metric, {}).get("change")
    noise = ""
    if change is not None:
        noise = (f" (change {change['estimate']:+.4f}, {spec.evaluation.ci_level:.0%} CI "
                 f"[{change['low']:+.4f}, {change['high']:+.4f}]"
                 + ("; within noise)" if change.get("within_noise") else ")"))
    status = "met" if verdict.target_met else "not met"
    values = "n/a" if before is None or after is None else f"{before:.4f} -> {after:.4f}"
    return (f"Target {status}: {split} {metric} {values}{noise}; goal: remove "
            f"{spec.objective.reduction:.0%} of the audit surrogate ({section['audit_before']:.4f} -> "
            f"{section['audit_after']:.4f}, goal {abs(section['audit_goal']):.4f})")


def _target_section(spec: CorrectionSpec, state: Tracking, final: Measurement, verdict: Verdict,
                    before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    origin = state.origin
    sign = 1.0 if origin.target >= 0 else -1.0
    robust = spec.objective.metric == "robustness"
    hard = headline_metric(spec.objective.metric)
    decision = verdict.decision_split
    section = {
        "metric": spec.objective.metric,
        "hard_metric": headline_metric(spec.objective.metric),
        "surrogate": SURROGATES[spec.objective.metric],
        "audit_before": origin.target,
        "audit_goal": sign * state.goal,
        "audit_after": final.target,
        "audit_hard_before": origin.robust_accuracy if robust else origin.hard,
        "audit_hard_after": final.robust_accuracy if robust else final.hard,
        "goal_reached": verdict.goal_reached,
        "decision_split": verdict.decision_split,
        "iterations": len(state.records),
        "stopped_because": state.stop_reason,
        "eval_hard_before": before[decision].get(hard),
        "eval_hard_after": after[decision].get(hard),
    }
    section["headline"] = _headline(section, verdict, spec)
    return section


def build_report(*, spec: CorrectionSpec, inputs: CorrectionInputs, sensitive: str,
                 before: dict[str, Any], after: dict[str, Any], state: Tracking, final: Measurement,
                 verdict: Verdict, final_weights: np.ndarray, polish: dict[str, Any],
                 timings: dict[str, float], device: str, frontier: Frontier,
                 provenance: dict[str, Any], extra_notes: list[str] | None = None) -> dict[str, Any]:
    """Assemble the report of one correction (every number JSON-serializable)."""
    iterations = state.records
    notes = [*inputs.notes, *(extra_notes or [])]
    for row in iterations:
        notes.extend(row["notes"])
    return {
        "report_version": REPORT_VERSION,
        "target_met": verdict.target_met,
        "warnings": list(verdict.warnings),
        "spec": spec.to_dict(),
        "model": {"architecture": inputs.arch.to_dict(), "parameters": inputs.arch.parameter_count(),
                  "influence_scope": spec.influence.scope,
                  "head_parameters": inputs.arch.head_in_features + 1},
        "data": {
            "sensitive_attribute": sensitive,
            "features": len(inputs.train.feature_names),
            "train_rows": inputs.train.n,
            "audit_rows": inputs.audit.n,
            "eval_rows": inputs.eval.n if inputs.eval is not None else None,
        },
        "target": _target_section(spec, state, final, verdict, before, after),
        "before": before,
        "after": after,
        "confidence": verdict.confidence,
        "predicted": _predicted(iterations),
        "tracking": {"accepted_steps": len(iterations), "undone": state.undone,
                     "stopped_because": state.stop_reason, "input": state.origin.to_dict(),
                     "result": final.to_dict()},
        "weights": _weights_summary(final_weights - 1.0, state.solved, spec),
        "influence": {"polish": polish, "l2_reg": spec.influence.l2_reg,
                      "damping": spec.influence.damping, "hessian": spec.method.hessian},
        "timings": dict(timings),
        "device": device,
        "notes": notes,
        "frontier": frontier.points,
        "frontier_info": frontier.info,
        "provenance": provenance,
    }


def format_summary(report: dict[str, Any]) -> str:
    """A plain-text before/after table of the headline metrics, for terminals."""
    lines = []
    target = report["target"]
    lines.append(f"TARGET {'MET' if report['target_met'] else 'NOT MET'}: {target['metric']} on "
                 f"{report['data']['sensitive_attribute']}")
    lines.append(target["headline"])
    lines.append(f"audit surrogate ({target['surrogate']}) {_plain(target['audit_before'])} -> "
                 f"{_plain(target['audit_after'])} (goal {_plain(target['audit_goal'])}, "
                 f"{target['iterations']} step(s); stopped: {target['stopped_because']})")
    lines.extend(f"warning [{w['code']}]: {w['message']}" for w in report["warnings"])
    for split in report["before"]:
        level = report["confidence"].get(split, {}).get("level", 0.95)
        lines.append(f"\n{split:<34}{'before':>10}{'after':>10}{'change':>10}   {level:.0%} CI of the change")
        for key in HEADLINE:
            old, new = report["before"][split].get(key), report["after"][split].get(key)
            if old is None and new is None:
                continue
            change = new - old if isinstance(old, float) and isinstance(new, float) else None
            lines.append(f"  {key:<32}{_plain(old):>10}{_plain(new):>10}{_plain(change):>10}   "
                         + _change_interval(report["confidence"].get(split, {}).get(key)))
        lines.extend(_robust_sample_line(report["after"][split]))
    predicted = report["predicted"]
    lines.append(f"\npredicted/realized audit target change: {_plain(predicted['target_change'])} / "
                 f"{_plain(predicted['realized_target_change'])}; utility change: "
                 f"{_plain(predicted['utility_change'])} / {_plain(predicted['realized_utility_change'])}")
    lines.append(_frontier_line(report))
    lines.append(f"total time {report['timings'].get('total', 0.0):.2f}s on {report['device']}; report "
                 f"{report['provenance']['report_id']}")
    lines.extend(f"note: {note}" for note in report["notes"])
    return "\n".join(lines)


def _robust_sample_line(metrics: dict[str, Any]) -> list[str]:
    """Which rows the split's robust accuracy is of, when a sample."""
    entry = next(iter(metrics.get("robustness", {}).values()), None)
    if not entry or not entry.get("sampled"):
        return []
    return [f"  (robust accuracy on a seeded sample of {entry['rows']} of {entry['split_rows']} rows, "
            "stratified by group; evaluation.robust_sample_rows)"]


def _change_interval(interval: dict[str, Any] | None) -> str:
    if not interval:
        return ""
    change = interval["change"]
    noise = " within noise" if change["within_noise"] else ""
    return f"[{change['low']:+.4f}, {change['high']:+.4f}]{noise}"


def _frontier_line(report: dict[str, Any]) -> str:
    info = report["frontier_info"]
    if info.get("skipped"):
        return f"frontier: not computed ({info['skipped']})"
    split = report["target"]["decision_split"]
    metric = report["target"]["hard_metric"]
    cells = [f"{'rho' if 'reduction' in p else 'k'}={p.get('reduction', p.get('k_fraction')):g}: "
             f"{_plain(p[split].get(metric))}/{_plain(p[split]['accuracy'])}"
             for p in report["frontier"]]
    return f"frontier ({split} {metric}/accuracy per point, {info['seconds']:.1f}s): " + ", ".join(cells)


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
