"""Result rows, the accuracy/DP Pareto front, and the markdown tables."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ACC_TIE",
    "DP_TIE",
    "Row",
    "adaptive_verdict",
    "mark_pareto",
    "markdown_methods",
    "markdown_results",
    "markdown_robustness",
    "markdown_soft_vs_hard",
    "markdown_timings",
    "row_from_metrics",
    "trade_off_verdict",
]

STAGE_COLUMNS = ("load", "polish", "influence", "weights", "unlearn", "evaluate", "total")
ACC_TIE = 0.001
"""Eval-accuracy differences up to this (0.1 pp, ≈ 8 eval rows) count as a tie in a verdict."""
DP_TIE = 0.005
"""Eval DP differences up to this count as a tie in a verdict."""


@dataclass
class Row:
    """One measured configuration on one dataset (eval-split metrics).

    ``robust_accuracy`` is the adaptive robust accuracy (the attack recomputed on the corrected
    model), ``robust_accuracy_frozen`` the accuracy on the original model's adversarial points;
    both only with robust evaluation on. ``table`` is the :class:`~benchmarks.variants.Variant`'s.
    """

    dataset: str
    variant: str
    family: str
    status: str
    accuracy: float | None = None
    dp: float | None = None
    eo: float | None = None
    eop: float | None = None
    seconds: float | None = None
    pareto: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    robust_accuracy: float | None = None
    robust_accuracy_frozen: float | None = None
    table: str = "main"

    @property
    def ok(self) -> bool:
        """Whether the row was measured."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON data."""
        return asdict(self)


def row_from_metrics(dataset: str, variant: str, family: str, metrics: Mapping[str, Any],
                     seconds: float, details: dict[str, Any] | None = None) -> Row:
    """A measured row from :func:`workers.engine.evaluation.metrics.classification_metrics` output
    (or an engine report's ``after.eval``, which adds the robust accuracies)."""
    return Row(dataset, variant, family, "ok", metrics["accuracy"],
               metrics["demographic_parity_difference"], metrics["equalized_odds_difference"],
               metrics["equal_opportunity_difference"], seconds, details=details or {},
               robust_accuracy=metrics.get("robust_accuracy"),
               robust_accuracy_frozen=metrics.get("robust_accuracy_frozen"))


def _dominates(a: Row, b: Row) -> bool:
    assert a.accuracy is not None and a.dp is not None and b.accuracy is not None and b.dp is not None
    no_worse = a.accuracy >= b.accuracy and a.dp <= b.dp
    return no_worse and (a.accuracy > b.accuracy or a.dp < b.dp)


def mark_pareto(rows: Sequence[Row]) -> None:
    """Set ``pareto`` on the measured rows no other row beats on both eval accuracy and eval DP."""
    measured = [r for r in rows if r.ok and r.accuracy is not None and r.dp is not None]
    for row in measured:
        row.pareto = not any(_dominates(other, row) for other in measured if other is not row)


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _delta(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return "–"
    return f"{100 * (value - reference):+.2f}"


def _sorted(rows: Iterable[Row]) -> list[Row]:
    measured = sorted((r for r in rows if r.ok), key=lambda r: (r.dp if r.dp is not None else 1e9,
                                                                 -(r.accuracy or 0.0)))
    return measured + [r for r in rows if not r.ok]


def markdown_results(rows: Sequence[Row]) -> str:
    """One table per dataset, sorted by eval DP difference; ★ marks the Pareto front."""
    parts: list[str] = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        subset = [r for r in rows if r.dataset == dataset]
        original = next((r for r in subset if r.family == "original" and r.ok), None)
        reference = original.accuracy if original else None
        parts += [f"### {dataset}", "",
                  "| configuration | eval acc | Δacc (pp) | eval DP | eval EO | seconds | Pareto |",
                  "|---|---:|---:|---:|---:|---:|:---:|"]
        for row in _sorted(subset):
            if not row.ok:
                parts.append(f"| {row.variant} | {row.status} | | | | | |")
                continue
            parts.append(f"| {row.variant} | {_num(row.accuracy)} | {_delta(row.accuracy, reference)} | "
                         f"{_num(row.dp)} | {_num(row.eo)} | {_num(row.seconds, 2)} | "
                         f"{'★' if row.pareto else ''} |")
        parts.append("")
    return "\n".join(parts)


def markdown_timings(timings: Mapping[str, Mapping[str, float]]) -> str:
    """Per-stage seconds of the default correction, one row per run (dataset and setting)."""
    lines = ["| run | " + " | ".join(STAGE_COLUMNS) + " |",
             "|---|" + "---:|" * len(STAGE_COLUMNS)]
    for dataset, stages in timings.items():
        cells = " | ".join(_num(stages.get(stage), 3) for stage in STAGE_COLUMNS)
        lines.append(f"| {dataset} | {cells} |")
    return "\n".join(lines) + "\n"


def _is_soft_newton(row: Row) -> bool:
    spec = row.details.get("spec", {})
    return (row.ok and row.family == "soft" and spec.get("method") == "newton"
            and spec.get("weighting", {}).get("scheme") == "soft-2.3")


def _interpolate(points: Sequence[tuple[float, float, str]], dp: float) -> tuple[float, str] | None:
    """Accuracy of a DP→accuracy curve at ``dp`` (linear between neighbours; None outside),
    with the names of the two points it lies between."""
    ordered = sorted(points)
    for (dp0, acc0, name0), (dp1, acc1, name1) in itertools.pairwise(ordered):
        if dp0 <= dp <= dp1:
            accuracy = acc0 if dp1 == dp0 else acc0 + (acc1 - acc0) * (dp - dp0) / (dp1 - dp0)
            return accuracy, f"{name0} … {name1}"
    return None


def markdown_soft_vs_hard(rows: Sequence[Row]) -> str:
    """For each hard row: the accuracy the soft-2.3/newton ρ-curve reaches at the same eval DP.

    The curve is the soft-2.3 newton rows plus the original model (ρ = 0), interpolated linearly
    in eval DP between the two measured points named in the last column (so a coarse curve, as
    in ``--quick``, gives a coarse answer); a positive difference means soft is more accurate
    than hard at equal DP.
    """
    lines = ["| dataset | hard row | eval DP | hard acc | soft acc at same DP | soft − hard (pp) | "
             "interpolated between |",
             "|---|---|---:|---:|---:|---:|---|"]
    for dataset in dict.fromkeys(r.dataset for r in rows):
        subset = [r for r in rows if r.dataset == dataset and r.ok]
        curve = [(r.dp, r.accuracy, r.variant) for r in subset
                 if (_is_soft_newton(r) or r.family == "original")
                 and r.dp is not None and r.accuracy is not None]
        for row in (r for r in subset if r.family == "hard"):
            if row.dp is None or row.accuracy is None:
                continue
            found = _interpolate(curve, row.dp)
            soft, between = found if found else (None, "outside the soft curve")
            lines.append(f"| {dataset} | {row.variant} | {_num(row.dp)} | {_num(row.accuracy)} | "
                         f"{_num(soft)} | {_delta(soft, row.accuracy)} | {between} |")
    return "\n".join(lines) + "\n"


def _compare(difference: float, tie: float) -> int:
    """+1 / −1 when ``difference`` is above ``tie`` / below −``tie``, else 0."""
    return 0 if abs(difference) <= tie else (1 if difference > 0 else -1)


def trade_off_verdict(soft: Row, hard: Row) -> str:
    """Whether ``soft`` improves on ``hard``'s eval accuracy/DP trade-off.

    Differences up to :data:`ACC_TIE` (accuracy) and :data:`DP_TIE` (DP) count as ties. Soft
    dominates when it is no worse on both and better on one; hard dominates likewise; otherwise
    the verdict names which is fairer and which keeps accuracy. The numbers are soft − hard.
    """
    if soft.accuracy is None or soft.dp is None or hard.accuracy is None or hard.dp is None:
        return "–"
    d_acc, d_dp = soft.accuracy - hard.accuracy, soft.dp - hard.dp
    more_accurate, fairer = _compare(d_acc, ACC_TIE), _compare(-d_dp, DP_TIE)
    numbers = f"({100 * d_acc:+.2f} pp, DP {d_dp:+.3f})"
    if more_accurate == fairer == 0:
        return f"tie {numbers}"
    if more_accurate >= 0 and fairer >= 0:
        return f"**yes**, soft dominates {numbers}"
    if more_accurate <= 0 and fairer <= 0:
        return f"**no**, hard dominates {numbers}"
    if fairer > 0:
        return f"neither: soft lower DP, hard more accurate {numbers}"
    return f"neither: hard lower DP, soft more accurate {numbers}"


def _split_name(row: Row) -> tuple[str, str]:
    """(method, weights) of a method/robustness-table row, named ``"<method>, <weights>"``."""
    method, _, weights = row.variant.partition(", ")
    return method, weights


def _original_cells(rows: Sequence[Row]) -> dict[str, Any] | None:
    """The original model's eval metrics, as an engine row's report recorded them."""
    return next((r.details["eval_before"] for r in rows if r.ok and "eval_before" in r.details), None)


def _method_line(method: str, weights: str, row: Row, verdict: str) -> str:
    if not row.ok:
        return f"| {method} | {weights} | {row.status} | | | | | |"
    return (f"| {method} | {weights} | {_num(row.accuracy)} | {_num(row.dp)} | {_num(row.eo)} | "
            f"{_num(row.robust_accuracy)} | {_num(row.details.get('method_seconds'), 2)} | {verdict} |")


def _equal_dp(hard: Row, candidates: Sequence[Row]) -> Row | None:
    """The measured soft row whose eval DP is closest to ``hard``'s."""
    measured = [r for r in candidates if r.ok and r.dp is not None]
    if hard.dp is None or not measured:
        return None
    target = hard.dp
    return min(measured, key=lambda r: abs((r.dp or 0.0) - target))


def markdown_methods(rows: Sequence[Row]) -> str:
    """The method table, one per dataset: per method, hard, soft at ρ = 0.6, and soft at the ρ
    of the sweep whose eval DP is closest to hard's ("nearest DP"), with the verdict of each soft row
    against hard (:func:`trade_off_verdict`). Seconds: polish → unlearn."""
    parts: list[str] = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        subset = [r for r in rows if r.dataset == dataset]
        parts += [f"### {dataset}", "",
                  "| method | weights | eval acc | eval DP | eval EO | robust acc (adaptive) | "
                  "seconds | soft better than hard? |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        original = _original_cells(subset)
        if original is not None:
            parts.append(f"| original model | – | {_num(original.get('accuracy'))} | "
                         f"{_num(original.get('demographic_parity_difference'))} | "
                         f"{_num(original.get('equalized_odds_difference'))} | "
                         f"{_num(original.get('robust_accuracy'))} | – | |")
        for method in dict.fromkeys(_split_name(r)[0] for r in subset):
            own = [r for r in subset if _split_name(r)[0] == method]
            hard = next((r for r in own if r.family == "hard"), None)
            soft = next((r for r in own if r.family == "soft"), None)
            if hard is None or soft is None:
                continue
            parts.append(_method_line(method, _split_name(hard)[1], hard, ""))
            parts.append(_method_line(method, _split_name(soft)[1], soft,
                                      trade_off_verdict(soft, hard) if hard.ok else "–"))
            matched = _equal_dp(hard, [r for r in own if r.family in ("soft", "soft ρ-sweep")])
            if matched is not None:
                parts.append(_method_line(method, f"{_split_name(matched)[1]} (nearest DP)", matched,
                                          trade_off_verdict(matched, hard)))
        parts.append("")
    return "\n".join(parts)


def _change_cell(change: Mapping[str, Any] | None) -> str:
    """A bootstrap change in pp with its 95 % interval; bold when the interval is above 0,
    ``worse`` when it is below 0."""
    if not change or change.get("estimate") is None:
        return "–"
    estimate, low, high = (100 * float(change[k]) for k in ("estimate", "low", "high"))
    cell = f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]"
    if low > 0:
        return f"**{cell}**"
    return f"{cell} worse" if high < 0 else cell


def _codes(codes: Sequence[str]) -> str:
    """Warning codes in order of first appearance, a repeated one as ``code ×n``."""
    counts = {code: codes.count(code) for code in dict.fromkeys(codes)}
    return ", ".join(code if n == 1 else f"{code} ×{n}" for code, n in counts.items()) or "–"


def adaptive_verdict(row: Row) -> str:
    """``gain`` when the 95 % interval of the eval adaptive robust-accuracy change is above 0,
    ``worse`` when the point estimate is below 0 (a model less robust than its input), ``none``
    otherwise (within noise, or no change), ``–`` without the number."""
    change = row.details.get("decision", {}).get("robust_accuracy_change")
    if not row.ok or not change or change.get("estimate") is None:
        return "–"
    if float(change["low"]) > 0:
        return "gain"
    return "worse" if float(change["estimate"]) < 0 else "none"


def markdown_robustness(rows: Sequence[Row]) -> str:
    """The robustness-objective table, one per dataset: eval accuracy and adaptive robust accuracy
    with the paired-bootstrap change (pp, 95 % interval; bold = interval above 0), frozen robust
    accuracy, eval DP, the audit target (mean adaptive adversarial log-loss) before → goal →
    after, steps accepted (undone), ``target_met``, warning codes and seconds (polish → unlearn /
    whole job). Under each table: the rows with a real adaptive gain and any row whose adaptive
    robust accuracy fell below the input model's."""
    parts: list[str] = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        subset = [r for r in rows if r.dataset == dataset]
        parts += [f"### {dataset}", "",
                  "| configuration | eval acc | Δacc (pp) [95 % CI] | robust acc (adaptive) | "
                  "Δ adaptive (pp) [95 % CI] | robust acc (frozen) | eval DP | "
                  "audit adv. log-loss: before → goal → after | steps (undone) | target_met | "
                  "warnings | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|:---:|---|---:|"]
        original = _original_cells(subset)
        if original is not None:
            parts.append(f"| original model | {_num(original.get('accuracy'))} | | "
                         f"{_num(original.get('robust_accuracy'))} | | "
                         f"{_num(original.get('robust_accuracy_frozen'))} | "
                         f"{_num(original.get('demographic_parity_difference'))} | | | | | |")
        for row in subset:
            if not row.ok:
                parts.append(f"| {row.variant} | {row.status} | | | | | | | | | | |")
                continue
            target = row.details.get("audit_target", {})
            decision = row.details.get("decision", {})
            audit = (f"{_num(target.get('audit_before'), 3)} → {_num(target.get('audit_goal'), 3)} → "
                     f"{_num(target.get('audit_after'), 3)}")
            steps = f"{decision.get('accepted_steps', '–')} ({decision.get('undone', '–')})"
            met = {True: "yes", False: "no"}.get(decision.get("target_met"), "–")
            warnings = _codes(decision.get("warnings", []))
            total = row.details.get("timings", {}).get("total")
            parts.append(f"| {row.variant} | {_num(row.accuracy)} | "
                         f"{_change_cell(decision.get('accuracy_change'))} | "
                         f"{_num(row.robust_accuracy)} | "
                         f"{_change_cell(decision.get('robust_accuracy_change'))} | "
                         f"{_num(row.robust_accuracy_frozen)} | {_num(row.dp)} | {audit} | {steps} | "
                         f"{met} | {warnings} | {_num(row.details.get('method_seconds'), 2)} / "
                         f"{_num(total, 2)} |")
        verdicts = {r.variant: adaptive_verdict(r) for r in subset}
        gains = [name for name, v in verdicts.items() if v == "gain"]
        worse = [name for name, v in verdicts.items() if v == "worse"]
        parts += ["", "- Real adaptive gain (95 % interval of the change above 0): "
                  + ("; ".join(gains) if gains else "**none** — no configuration improves adaptive "
                     "robust accuracy beyond noise on this dataset") + ".",
                  "- Adaptive robust accuracy below the input model's: "
                  + ("**" + "; ".join(worse) + "**" if worse else "none") + ".", ""]
    return "\n".join(parts)
