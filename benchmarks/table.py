"""Result rows, the accuracy/DP Pareto front, and the markdown tables."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Row",
    "mark_pareto",
    "markdown_results",
    "markdown_soft_vs_hard",
    "markdown_timings",
    "row_from_metrics",
]

STAGE_COLUMNS = ("load", "polish", "influence", "weights", "unlearn", "evaluate", "total")


@dataclass
class Row:
    """One measured configuration on one dataset (eval-split metrics)."""

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

    @property
    def ok(self) -> bool:
        """Whether the row was measured."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON data."""
        return asdict(self)


def row_from_metrics(dataset: str, variant: str, family: str, metrics: Mapping[str, Any],
                     seconds: float, details: dict[str, Any] | None = None) -> Row:
    """A measured row from :func:`workers.engine.evaluation.classification_metrics` output."""
    return Row(dataset, variant, family, "ok", metrics["accuracy"],
               metrics["demographic_parity_difference"], metrics["equalized_odds_difference"],
               metrics["equal_opportunity_difference"], seconds, details=details or {})


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
