"""The report the page tests render: the real CLI pipeline run once per session on the real
Adult example, and a copy with synthetic stand-ins for the report fields the engine does not
write yet (``frontier``, ``frontier_info``, ``provenance``, ``weights.histogram``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import example_args, run_correct
from workers.engine.examples.common import ExampleInfo


@pytest.fixture(scope="session")
def adult_report(adult_example: ExampleInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of ``softunlearn correct --objective demographic_parity`` on the Adult example."""
    out = tmp_path_factory.mktemp("report-page")
    return run_correct(example_args(adult_example, out, "--objective", "demographic_parity"), out)


SYNTHETIC_REDUCTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
SYNTHETIC_K_FRACTIONS = (0.01, 0.05, 0.1)


def _synthetic_point(report: dict[str, Any], scheme: str, key: str, value: float, shift: float,
                     ) -> dict[str, Any]:
    """One made-up frontier point: the input model's metrics moved by ``shift`` (fairer, less accurate)."""
    point: dict[str, Any] = {"scheme": scheme, key: value,
                             "guard": {"accepted": True, "reason": None},
                             "predicted": {"target_change": -0.01, "utility_change": 0.0, "feasible": True}}
    for split in ("audit", "eval"):
        before = report["before"][split]
        metrics = {k: v for k, v in before.items() if isinstance(v, float)}
        metrics["accuracy"] = before["accuracy"] - 0.02 * shift
        metrics["log_loss"] = before["log_loss"] + 0.03 * shift
        for gap in ("demographic_parity_difference", "equal_opportunity_difference",
                    "equalized_odds_difference"):
            metrics[gap] = before[gap] * (1.0 - 0.8 * shift)
        point[split] = metrics
    return point


def with_synthetic_fields(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` with SYNTHETIC ``frontier`` (10 soft points, 3 hard ones),
    ``frontier_info``, ``provenance`` and ``weights.histogram``, shaped as the engine will write
    them; the numbers are made up, only the shapes matter for the page."""
    out = copy.deepcopy(report)
    soft = [_synthetic_point(report, "soft-2.3", "reduction", r, r) for r in SYNTHETIC_REDUCTIONS]
    hard = [_synthetic_point(report, "hard", "k_fraction", k, 4 * k) for k in SYNTHETIC_K_FRACTIONS]
    out["frontier"] = soft + hard
    out["frontier_info"] = {"step": "one Newton step per requested reduction from the input model",
                            "reductions": list(SYNTHETIC_REDUCTIONS),
                            "k_fractions": list(SYNTHETIC_K_FRACTIONS),
                            "scheme": "soft-2.3", "seconds": 1.25, "skipped": None}
    out["provenance"] = {
        "report_id": "rep-synthetic-0001", "run_id": "run-synthetic-0001", "job_id": None,
        "version": "0.1.0", "created_at": "2025-01-01T00:00:00Z", "device": report["device"],
        "model_sha256": "0" * 64, "datasets": {"train": "1" * 64, "audit": "2" * 64, "eval": "3" * 64},
        "corrected_model_sha256": "4" * 64, "seeds": {"job": 0, "bootstrap": 0},
        "software": {"python": "3.11", "torch": "2.13.0", "numpy": "2.0", "platform": "linux"}}
    edges = [-1.0 + 0.25 * i for i in range(17)]
    out["weights"]["histogram"] = {"edges": edges, "counts": [3, 5, 9, 20, 60, 300, 2500, 9000, 9500, 6000,
                                                              2200, 400, 120, 30, 10, 5]}
    return out


@pytest.fixture(scope="session")
def augmented_report(adult_report: dict[str, Any]) -> dict[str, Any]:
    """The real report plus the synthetic optional fields (see :func:`with_synthetic_fields`)."""
    return with_synthetic_fields(adult_report)

