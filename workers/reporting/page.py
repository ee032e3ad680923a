"""The report as one self-contained HTML page.

:func:`render_html` turns the report into a plain view (:func:`page_context`: lists and dicts of
values, no markup) and renders ``templates/report.html.j2`` with Jinja2, autoescaping every value;
the only markup not written by the template is the plots' SVG (:mod:`workers.reporting.plots`),
whose text matplotlib escapes. Keys that older reports lack (``frontier``, ``frontier_info``,
``provenance``, ``weights.histogram``, ``target.headline``) are optional: the page says what is
missing instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from workers.engine.evaluation.report import HEADLINE
from workers.reporting import plots

__all__ = ["format_value", "page_context", "render_html"]

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "log_loss": "Log-loss",
    "demographic_parity_difference": "Demographic parity difference",
    "equal_opportunity_difference": "Equal opportunity difference",
    "equalized_odds_difference": "Equalized odds difference",
    "robust_accuracy": "Robust accuracy (adaptive attack)",
    "robust_accuracy_frozen": "Robust accuracy (frozen attack)",
}
GAPS = ("demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference")
WEIGHT_FIELDS = (("scheme", "scheme"), ("min", "min ε"), ("max", "max ε"), ("l2_norm", "‖ε‖₂"),
                 ("effective_weight_min", "min weight"), ("effective_weight_max", "max weight"),
                 ("down_weighted", "rows down-weighted"), ("up_weighted", "rows up-weighted"),
                 ("removed", "rows removed"), ("negative_effective_weights", "negative weights"))
PROVENANCE_FIELDS = (("report_id", "report id"), ("run_id", "run id"), ("job_id", "job id"),
                     ("version", "SoftUnlearn version"), ("created_at", "created at"), ("device", "device"),
                     ("model_sha256", "input model sha256"),
                     ("corrected_model_sha256", "corrected model sha256"))

_ENV = Environment(loader=PackageLoader("workers.reporting", "templates"), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def format_value(value: Any, digits: int = 4) -> str:
    """A report value as page text: floats to ``digits`` decimals, None as a dash, booleans as yes/no."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


_ENV.filters["num"] = format_value


def _decision_split(report: Mapping[str, Any]) -> str:
    split = report["target"].get("decision_split")
    if split in report["before"]:
        return str(split)
    return "eval" if "eval" in report["before"] else "audit"


def _headline(report: Mapping[str, Any], split: str) -> str:
    """``target.headline``, or a sentence built from the target fields where the report has none."""
    target = report["target"]
    if target.get("headline"):
        return str(target["headline"])
    metric = target["hard_metric"]
    sentence = (f"On audit, {metric} went from {format_value(target.get('audit_hard_before'))} to "
                f"{format_value(target.get('audit_hard_after'))}")
    if split != "audit":
        sentence += (f"; on {split}, from {format_value(report['before'][split].get(metric))} to "
                     f"{format_value(report['after'][split].get(metric))}")
    return f"{sentence} (stopped: {target.get('stopped_because', 'unknown')})."


def _interval(ci: Any) -> dict[str, Any] | None:
    if not isinstance(ci, Mapping) or ci.get("low") is None or ci.get("high") is None:
        return None
    return {"low": ci["low"], "high": ci["high"]}


def _confidence(report: Mapping[str, Any], split: str) -> Mapping[str, Any]:
    """``report["confidence"][split]``, or an empty map where the report has none."""
    cis = (report.get("confidence") or {}).get(split)
    return cis if isinstance(cis, Mapping) else {}


def _metric_rows(report: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    cis = _confidence(report, split)
    rows = []
    for key in HEADLINE:
        old, new = report["before"][split].get(key), report["after"][split].get(key)
        if old is None and new is None:
            continue
        ci = cis.get(key) or {}
        change = (new - old if isinstance(old, int | float) and isinstance(new, int | float) else None)
        rows.append({"key": key, "label": METRIC_LABELS.get(key, key), "before": old, "after": new,
                     "change": change, "before_ci": _interval(ci.get("before")),
                     "after_ci": _interval(ci.get("after")), "change_ci": _interval(ci.get("change")),
                     "within_noise": (ci.get("change") or {}).get("within_noise")})
    return rows


def _group_rows(report: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    before, after = report["before"][split]["groups"], report["after"][split]["groups"]
    rows = []
    for group in dict.fromkeys([*before, *after]):
        counts = before.get(group) or after.get(group) or {}
        stages = [{"stage": stage, **{key: (rows_.get(group) or {}).get(key)
                                      for key in ("selection_rate", "tpr", "fpr", "accuracy")}}
                  for stage, rows_ in (("before", before), ("after", after))]
        rows.append({"name": str(group), "n": counts.get("n"), "positives": counts.get("positives"),
                     "negatives": counts.get("negatives"), "stages": stages})
    return rows


def _confidence_info(report: Mapping[str, Any], split: str) -> dict[str, Any] | None:
    cis = _confidence(report, split)
    if not cis:
        return None
    info = {key: cis.get(key) for key in ("level", "n_boot", "method", "seed", "predictions_changed")}
    entry = next(iter((report["after"][split].get("robustness") or {}).values()), None)
    info["robust_sample"] = entry if isinstance(entry, Mapping) and entry.get("sampled") else None
    return info


def _split_view(report: Mapping[str, Any], split: str) -> dict[str, Any]:
    groups_before, groups_after = report["before"][split]["groups"], report["after"][split]["groups"]
    return {"name": split, "rows": report["before"][split].get("n"), "metrics": _metric_rows(report, split),
            "confidence": _confidence_info(report, split), "groups": _group_rows(report, split),
            "group_plot": Markup(plots.group_bars_svg(groups_before, groups_after, split))}


def _frontier_row(label: str, setting: str, point: Mapping[str, Any], split: str, other: str | None,
                  guard: Any, kind: str) -> dict[str, Any]:
    values = point.get(split) or {}
    guard_map = guard if isinstance(guard, Mapping) else {}
    return {"label": label, "setting": setting, "kind": kind,
            "metrics": {key: values.get(key) for key in ("accuracy", "log_loss", *GAPS, "robust_accuracy")},
            "other_accuracy": (point.get(other) or {}).get("accuracy") if other else None,
            "accepted": guard_map.get("accepted"), "reason": guard_map.get("reason")}


def _short(value: Any) -> str:
    """A setting such as ρ or k in its shortest form (0.1, not 0.1000)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return format_value(value)


def _setting(point: Mapping[str, Any]) -> str:
    """A frontier point's setting: "ρ = 0.3" (soft) or "k = 0.05" (hard)."""
    for key, symbol in (("reduction", "ρ"), ("k_fraction", "k")):
        if key in point:
            return f"{symbol} = {_short(point[key])}"
    return "–"


def _frontier_info(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """``frontier_info`` with every key the page shows (absent ones None, lists empty)."""
    info = report.get("frontier_info")
    if not isinstance(info, Mapping):
        return None
    lists = {key: [_short(v) for v in info.get(key) or []] for key in ("reductions", "k_fractions")}
    return {**{key: info.get(key) for key in ("step", "scheme", "seconds", "skipped")}, **lists}


def _frontier_view(report: Mapping[str, Any], split: str) -> dict[str, Any]:
    points = [p for p in report.get("frontier") or [] if isinstance(p, Mapping)]
    info = _frontier_info(report)
    skipped = info["skipped"] if info else None
    other = "audit" if split != "audit" else None
    if isinstance(skipped, str):
        message: str | None = f"The frontier was not computed: {skipped}"
    elif "frontier" not in report:
        message = ("This report has no frontier (written before frontiers were recorded); the plot "
                   "shows the input model and the chosen correction only.")
    else:
        message = None if points else "The frontier is empty."
    rows = [_frontier_row("before (input model)", "–", {s: report["before"][s] for s in report["before"]},
                          split, other, None, "before"),
            _frontier_row("chosen correction", "–", {s: report["after"][s] for s in report["after"]},
                          split, other, None, "chosen")]
    rows += [_frontier_row(str(p.get("scheme", "–")), _setting(p), p, split, other, p.get("guard"), "point")
             for p in points]
    plot = None if isinstance(skipped, str) else Markup(plots.frontier_svg(report, split, points))
    has_robust = any(row["metrics"]["robust_accuracy"] is not None for row in rows)
    return {"split": split, "other": other, "plot": plot, "message": message, "rows": rows,
            "has_robust": has_robust, "metric": report["target"]["hard_metric"],
            "info": info, "level": _confidence(report, split).get("level")}


def _histogram(weights: Mapping[str, Any]) -> tuple[list[float], list[int]] | str:
    """The weight histogram's edges and counts, or why there is none to plot."""
    histogram = weights.get("histogram")
    if not isinstance(histogram, Mapping):
        return "This report has no weight histogram (written before histograms were recorded)."
    edges, counts = histogram.get("edges"), histogram.get("counts")
    if (not isinstance(edges, Sequence) or not isinstance(counts, Sequence) or not counts
            or len(edges) != len(counts) + 1):
        return "The weight histogram is malformed (it needs k + 1 edges for k counts); not plotted."
    return [float(e) for e in edges], [int(c) for c in counts]


def _weights_view(report: Mapping[str, Any]) -> dict[str, Any]:
    weights = report.get("weights") or {}
    histogram = _histogram(weights)
    plot = Markup(plots.weights_svg(*histogram)) if isinstance(histogram, tuple) else None
    return {"fields": [(label, weights[key]) for key, label in WEIGHT_FIELDS if key in weights],
            "plot": plot, "message": histogram if isinstance(histogram, str) else None}


def _predicted_view(report: Mapping[str, Any]) -> dict[str, Any]:
    predicted = report.get("predicted") or {}
    iterations = [row for row in predicted.get("iterations") or [] if isinstance(row, Mapping)]
    keys = ("predicted_target_change", "realized_target_change", "predicted_utility_change",
            "realized_utility_change")
    return {"iterations": [{"iteration": row.get("iteration", i), **{k: row.get(k) for k in keys}}
                           for i, row in enumerate(iterations, start=1)],
            "total": {"predicted_target_change": predicted.get("target_change"),
                      "realized_target_change": predicted.get("realized_target_change"),
                      "predicted_utility_change": predicted.get("utility_change"),
                      "realized_utility_change": predicted.get("realized_utility_change")},
            "plot": Markup(plots.predicted_svg(iterations)) if iterations else None}


def _provenance_view(report: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    provenance = report.get("provenance")
    if not isinstance(provenance, Mapping):
        return None
    rows = [(label, format_value(provenance.get(key))) for key, label in PROVENANCE_FIELDS]
    for group, label in (("datasets", "{} data sha256"), ("seeds", "{} seed"), ("software", "{}")):
        values = provenance.get(group)
        if isinstance(values, Mapping):
            rows += [(label.format(name), format_value(value)) for name, value in values.items()]
    known = {key for key, _ in PROVENANCE_FIELDS} | {"datasets", "seeds", "software"}
    rows += [(str(key), json.dumps(value)) for key, value in provenance.items() if key not in known]
    return rows


def _facts(report: Mapping[str, Any], split: str) -> list[tuple[str, Any]]:
    spec, target, data = report.get("spec", {}), report["target"], report.get("data", {})
    return [("objective", target.get("metric")), ("hard-label metric", target.get("hard_metric")),
            ("sensitive attribute", data.get("sensitive_attribute")), ("decided on", split),
            ("weighting scheme", spec.get("weighting", {}).get("scheme")),
            ("method", spec.get("method", {}).get("name")), ("tracking steps", target.get("iterations")),
            ("stopped because", target.get("stopped_because")),
            ("rows (train / audit / eval)", " / ".join(format_value(data.get(k)) for k in
                                                      ("train_rows", "audit_rows", "eval_rows"))),
            ("device", report.get("device"))]


def _subtitle(report: Mapping[str, Any]) -> dict[str, Any]:
    provenance = report.get("provenance")
    provenance = provenance if isinstance(provenance, Mapping) else {}
    return {"objective": report["target"].get("metric"),
            "attribute": (report.get("data") or {}).get("sensitive_attribute"),
            "report_id": provenance.get("report_id"), "created_at": provenance.get("created_at")}


def page_context(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the template shows, computed from ``report``: plain values, plus the plots as SVG."""
    split = _decision_split(report)
    target = report["target"]
    return {
        "target_met": bool(report["target_met"]),
        "subtitle": _subtitle(report),
        "headline": _headline(report, split),
        "surrogate": {key: target.get(key)
                      for key in ("surrogate", "audit_before", "audit_after", "audit_goal")},
        "warnings": [{"code": str(w.get("code", "")), "message": str(w.get("message", ""))}
                     for w in report.get("warnings") or []],
        "facts": _facts(report, split),
        "splits": [_split_view(report, s) for s in report["before"]],
        "frontier": _frontier_view(report, split),
        "weights": _weights_view(report),
        "predicted": _predicted_view(report),
        "provenance": _provenance_view(report),
        "report_version": report.get("report_version"),
        "spec_json": json.dumps(report.get("spec", {}), indent=2, ensure_ascii=False),
        "timings": list((report.get("timings") or {}).items()),
        "notes": [str(note) for note in report.get("notes") or []],
        "metric_labels": METRIC_LABELS,
        "rates": plots.RATES,
    }


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report: no scripts, no external resources, every value
    escaped; the plots are inline SVG."""
    return _ENV.get_template("report.html.j2").render(page_context(report))
