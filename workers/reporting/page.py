"""The report as one self-contained HTML page."""

from __future__ import annotations

import html
import math
from typing import Any

from workers.engine.evaluation.report import HEADLINE

__all__ = ["render_html"]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _metrics_table(report: dict[str, Any], split: str) -> str:
    rows = []
    for key in HEADLINE:
        old = report["before"][split].get(key)
        new = report["after"][split].get(key)
        if old is None and new is None:
            continue
        change = new - old if isinstance(old, float) and isinstance(new, float) else None
        rows.append(f"<tr><td>{key}</td><td>{_fmt(old)}</td><td>{_fmt(new)}</td><td>{_fmt(change)}</td></tr>")
    return ("<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>"
            + "".join(rows) + "</table>")


def _groups_table(report: dict[str, Any], split: str) -> str:
    rows = []
    for stage in ("before", "after"):
        for group, row in report[stage][split]["groups"].items():
            cells = "".join(f"<td>{_fmt(row[k])}</td>" for k in ("n", "selection_rate", "tpr", "fpr",
                                                                  "accuracy"))
            rows.append(f"<tr><td>{stage}</td><td>{html.escape(group)}</td>{cells}</tr>")
    return ("<table><tr><th>model</th><th>group</th><th>n</th><th>selection rate</th><th>TPR</th>"
            "<th>FPR</th><th>accuracy</th></tr>" + "".join(rows) + "</table>")


def _verdict_html(report: dict[str, Any]) -> str:
    target = report["target"]
    status = "TARGET MET" if report["target_met"] else "TARGET NOT MET"
    colour = "#1a7f37" if report["target_met"] else "#b3261e"
    parts = [f"<p style='font-size:1.3em;color:{colour}'><b>{status}</b>: audit "
             f"{_fmt(target['hard_metric'])} {_fmt(target['audit_hard_before'])} → "
             f"{_fmt(target['audit_hard_after'])}; stopped: {_fmt(target['stopped_because'])}</p>"]
    if report["warnings"]:
        parts.append("<ul>" + "".join(f"<li><b>{html.escape(w['code'])}</b>: {html.escape(w['message'])}</li>"
                                      for w in report["warnings"]) + "</ul>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report (no scripts, every value escaped)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>SoftUnlearn report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
        "<h1>SoftUnlearn correction report</h1>",
        _verdict_html(report),
        f"<p>Target: <b>{_fmt(report['target']['metric'])}</b> on "
        f"<b>{_fmt(report['data']['sensitive_attribute'])}</b>; audit surrogate "
        f"{_fmt(report['target']['audit_before'])} → {_fmt(report['target']['audit_after'])} "
        f"(goal {_fmt(report['target']['audit_goal'])}) in {report['target']['iterations']} iteration(s); "
        f"scheme {_fmt(report['spec']['weighting']['scheme'])}, method "
        f"{_fmt(report['spec']['method']['name'])}, device {_fmt(report['device'])}.</p>",
    ]
    for split in report["before"]:
        parts.append(f"<h2>{html.escape(split)}</h2>{_metrics_table(report, split)}")
        parts.append(_groups_table(report, split))
    predicted = report["predicted"]
    parts.append("<h2>Predicted vs realized (audit)</h2><table><tr><th></th><th>predicted</th>"
                 "<th>realized</th></tr>"
                 f"<tr><td>target change</td><td>{_fmt(predicted['target_change'])}</td>"
                 f"<td>{_fmt(predicted['realized_target_change'])}</td></tr>"
                 f"<tr><td>utility (log-loss) change</td><td>{_fmt(predicted['utility_change'])}</td>"
                 f"<td>{_fmt(predicted['realized_utility_change'])}</td></tr></table>")
    weights = report["weights"]
    parts.append("<h2>Weights</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(weights.get(k))}</td></tr>"
        for k in ("scheme", "min", "max", "l2_norm", "down_weighted", "up_weighted", "removed",
                  "negative_effective_weights")) + "</table>")
    parts.append("<h2>Timings (s)</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in report["timings"].items())
        + "</table>")
    if report["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
