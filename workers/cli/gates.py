"""Release gates on a correction report: ``--gate 'SPLIT.METRIC<=VALUE'``.

A gate compares one number of the report with a threshold. ``SPLIT`` is ``audit`` or ``eval``;
``METRIC`` is a report metric (``accuracy``, ``log_loss``, the fairness differences, robust
accuracy) meaning its value *after* the correction, or that name with a suffix:

| suffix | value |
|---|---|
| (none) | ``report["after"][split][metric]`` |
| ``_before`` | ``report["before"][split][metric]`` |
| ``_change`` | after − before |
| ``_change_low`` | ``report["confidence"][split][metric]["change"]["low"]`` |
| ``_change_high`` | ``report["confidence"][split][metric]["change"]["high"]`` |

(the last two are the bounds of the paired bootstrap interval of the change).

Pure Python (no torch): ``softunlearn correct`` evaluates gates on the report it built, and a
thin client can evaluate them on a downloaded report. A malformed gate is a :class:`ValueError`
at parse time; a gate whose number the report lacks fails (it is not an error).
"""

from __future__ import annotations

import argparse
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["GATE_FORMS", "METRICS", "OPERATORS", "SPLITS", "Gate", "apply_gates", "evaluate_gate",
           "format_gates", "gate_argument", "parse_gate"]

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
SPLITS = ("audit", "eval")
METRICS = ("accuracy", "log_loss", "demographic_parity_difference", "equal_opportunity_difference",
           "equalized_odds_difference", "robust_accuracy", "robust_accuracy_frozen")
"""Metrics a gate may name (before/after split keys of the report)."""
# Longest first, so "_change_low" is not read as "_change".
SUFFIXES = (("_change_low", "change_low"), ("_change_high", "change_high"), ("_change", "change"),
            ("_before", "before"))
GATE_FORMS = ("SPLIT.METRIC OP VALUE with SPLIT audit|eval, OP one of <=, >=, <, >, VALUE a finite "
              "number, METRIC one of " + ", ".join(METRICS) + " (the value after the correction), "
              "optionally suffixed _before, _change (after - before), _change_low or _change_high "
              "(bootstrap interval of the change); e.g. 'eval.demographic_parity_difference<=0.05' or "
              "'eval.accuracy_change>=-0.01'")
_PATTERN = re.compile(r"^\s*(?P<split>[A-Za-z_]\w*)\.(?P<metric>[A-Za-z_]\w*)\s*(?P<op><=|>=|<|>)\s*"
                      r"(?P<value>[^\s<>=]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """One parsed gate: ``split.metric op threshold``; ``base`` is the report metric and
    ``kind`` which of its numbers (``after``, ``before``, ``change``, ``change_low``,
    ``change_high``)."""

    text: str
    split: str
    metric: str
    base: str
    kind: str
    op: str
    threshold: float


def _split_metric(metric: str) -> tuple[str, str]:
    for suffix, kind in SUFFIXES:
        if metric.endswith(suffix) and metric[: -len(suffix)] in METRICS:
            return metric[: -len(suffix)], kind
    return metric, "after"


def parse_gate(text: str) -> Gate:
    """Parse ``SPLIT.METRIC<=VALUE`` (operators ``<=``, ``>=``, ``<``, ``>``).

    Raises:
        ValueError: a malformed gate, unknown split or metric, or a non-finite value; the message
            lists the valid forms.
    """
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"malformed gate {text!r}: expected {GATE_FORMS}")
    split, metric, op, raw = match["split"], match["metric"], match["op"], match["value"]
    if split not in SPLITS:
        raise ValueError(f"gate {text!r}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    base, kind = _split_metric(metric)
    if base not in METRICS:
        raise ValueError(f"gate {text!r}: unknown metric {metric!r}; expected {GATE_FORMS}")
    try:
        threshold = float(raw)
    except ValueError:
        raise ValueError(f"gate {text!r}: {raw!r} is not a number; expected {GATE_FORMS}") from None
    if not math.isfinite(threshold):
        raise ValueError(f"gate {text!r}: the value must be a finite number, got {raw!r}")
    return Gate(text=f"{split}.{metric}{op}{raw}", split=split, metric=metric, base=base, kind=kind,
                op=op, threshold=threshold)


def gate_argument(text: str) -> Gate:
    """:func:`parse_gate` as an argparse ``type``: a malformed gate is a usage error (exit 2)."""
    try:
        return parse_gate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _split_value(report: dict[str, Any], stage: str, gate: Gate) -> tuple[float | None, str]:
    split = report.get(stage, {}).get(gate.split)
    if not isinstance(split, dict):
        return None, f"the report has no {gate.split} split (was --{gate.split} given?)"
    if gate.base not in split:
        hint = " (robust evaluation off?)" if gate.base.startswith("robust") else ""
        return None, f"the report has no {stage} {gate.base} on {gate.split}{hint}"
    value = _number(split[gate.base])
    return value, "" if value is not None else f"{stage} {gate.base} on {gate.split} is not a number"


def _interval_value(report: dict[str, Any], gate: Gate) -> tuple[float | None, str]:
    bound = gate.kind.removeprefix("change_")
    change = report.get("confidence", {}).get(gate.split, {}).get(gate.base, {}).get("change")
    if not isinstance(change, dict) or bound not in change:
        return None, f"the report has no bootstrap interval of the {gate.base} change on {gate.split}"
    value = _number(change[bound])
    return value, "" if value is not None else f"the {gate.kind} of {gate.base} is not a number"


def _value(report: dict[str, Any], gate: Gate) -> tuple[float | None, str]:
    """The gated number, or None and why it is missing."""
    if gate.kind in ("after", "before"):
        return _split_value(report, gate.kind, gate)
    if gate.kind == "change":
        after, why = _split_value(report, "after", gate)
        before, why_before = _split_value(report, "before", gate)
        if after is None or before is None:
            return None, why or why_before
        return after - before, ""
    return _interval_value(report, gate)


def evaluate_gate(gate: Gate, report: dict[str, Any]) -> dict[str, Any]:
    """The result row of ``gate`` on ``report`` (``gate``, ``split``, ``metric``, ``op``,
    ``threshold``, ``value``, ``passed``, ``message``). A missing number fails the gate."""
    value, missing = _value(report, gate)
    passed = value is not None and OPERATORS[gate.op](value, gate.threshold)
    if value is None:
        message = f"{gate.split}.{gate.metric}: {missing}; the gate fails"
    else:
        verdict = "passes" if passed else "fails"
        message = f"{gate.split}.{gate.metric} is {value:.6g}: {verdict} {gate.op} {gate.threshold:g}"
    return {"gate": gate.text, "split": gate.split, "metric": gate.metric, "op": gate.op,
            "threshold": gate.threshold, "value": value, "passed": passed, "message": message}


def apply_gates(report: dict[str, Any], gates: Iterable[Gate]) -> bool:
    """Evaluate ``gates`` on ``report`` and record them in it: ``report["gates"]`` (always, ``[]``
    without gates) and a ``gate_failed`` warning per failing gate. Returns whether all passed."""
    results = [evaluate_gate(gate, report) for gate in gates]
    report["gates"] = results
    warnings = report.setdefault("warnings", [])
    for row in results:
        if not row["passed"]:
            warnings.append({"code": "gate_failed",
                             "message": f"gate {row['gate']} failed: {row['message']}"})
    return all(row["passed"] for row in results)


def format_gates(results: list[dict[str, Any]]) -> str:
    """One ``PASS``/``FAIL`` line per gate result, for terminals (empty without gates)."""
    return "\n".join(f"gate {'PASS' if row['passed'] else 'FAIL'}: {row['gate']} ({row['message']})"
                     for row in results)
