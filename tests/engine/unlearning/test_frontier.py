"""The report's frontier, checked from outside the engine.

Two ways: (1) numpy alone, from the checkpoint's weights and the parquet files, recomputes the
influence, the weights and the Newton step of two soft points and one hard point and their eval
metrics; (2) a separate one-step job at the same ρ lands on the frontier's point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from tests.conftest import example_args, run_correct
from workers.engine.examples.common import ExampleInfo

pytestmark = pytest.mark.slow

RHOS = (0.3, 0.7)
HARD_K = 0.05


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


class _Split:
    """Head features Φ = [φ(x), 1] of one split, computed from the checkpoint with numpy."""

    def __init__(self, example: ExampleInfo, name: str, weights: dict[str, np.ndarray]) -> None:
        frame = pd.read_parquet(example.out_dir / f"{name}.parquet")
        x = frame.drop(columns=["income", "sex", "reference_logits"]).to_numpy(np.float64)
        for layer in range(len(weights) // 2 - 1):
            x = np.maximum(x @ weights[f"{2 * layer}.weight"].T + weights[f"{2 * layer}.bias"], 0.0)
        self.phi = np.column_stack([x, np.ones(len(frame))])
        self.y = frame["income"].to_numpy(np.float64)
        self.groups = frame["sex"].astype(str).to_numpy()

    def proba(self, theta: np.ndarray) -> np.ndarray:
        return _sigmoid(self.phi @ theta)

    def soft_gap_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean-probability gap between the two groups (larger minus smaller) and its gradient."""
        p = self.proba(theta)
        names = sorted(set(self.groups))
        means = {g: p[self.groups == g].mean() for g in names}
        top, bottom = max(names, key=means.__getitem__), min(names, key=means.__getitem__)
        slope = p * (1 - p)
        grad = (self.phi[self.groups == top] * slope[self.groups == top, None]).mean(axis=0) \
            - (self.phi[self.groups == bottom] * slope[self.groups == bottom, None]).mean(axis=0)
        return float(means[top] - means[bottom]), grad

    def metrics(self, theta: np.ndarray) -> dict[str, float]:
        p = np.clip(self.proba(theta), 1e-12, 1 - 1e-12)
        predicted = (p >= 0.5).astype(np.float64)
        rates = [predicted[self.groups == g].mean() for g in sorted(set(self.groups))]
        return {"accuracy": float((predicted == self.y).mean()),
                "log_loss": float(-(self.y * np.log(p) + (1 - self.y) * np.log(1 - p)).mean()),
                "demographic_parity_difference": float(max(rates) - min(rates))}


def _independent_points(example: ExampleInfo, spec: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Eval metrics of each frontier point, recomputed with numpy (head scope, no polish)."""
    weights = {k: v.astype(np.float64) for k, v in load_file(example.out_dir / "model.safetensors").items()}
    last = len(weights) // 2 - 1
    theta = np.concatenate([weights[f"{2 * last}.weight"].reshape(-1), weights[f"{2 * last}.bias"]])
    train, audit, evaluation = (_Split(example, name, weights) for name in ("train", "audit", "eval"))
    p = train.proba(theta)
    mask = np.ones_like(theta)
    mask[-1] = 0.0
    hessian = train.phi.T @ (train.phi * (p * (1 - p))[:, None]) \
        + np.diag(spec["influence"]["l2_reg"] * mask + spec["influence"]["damping"])
    gap, gap_grad = audit.soft_gap_and_gradient(theta)
    per_sample = train.phi * (p - train.y)[:, None]          # gᵢ = (pᵢ − yᵢ) φᵢ
    a = per_sample @ np.linalg.solve(hessian, gap_grad)      # removal of i changes the gap by aᵢ
    out = {}
    for rho in RHOS:
        eps = rho * abs(gap) * a / float(a @ a)              # soft-2.1: min-norm ε with aᵀε = ρ·gap
        out[f"reduction={rho:g}"] = evaluation.metrics(theta - np.linalg.solve(hessian, per_sample.T @ eps))
    order = np.argsort(a, kind="stable")[:int(HARD_K * len(a))]
    eps = np.zeros_like(a)
    eps[order[a[order] < 0]] = -1.0
    out[f"k_fraction={HARD_K:g}"] = evaluation.metrics(theta - np.linalg.solve(hessian, per_sample.T @ eps))
    return out


def _key(point: dict[str, Any]) -> str:
    if "reduction" in point:
        return f"reduction={point['reduction']:g}"
    return f"k_fraction={point['k_fraction']:g}"


def test_frontier_points_match_an_independent_numpy_recomputation(adult_example: ExampleInfo,
                                                                  tmp_path: Path) -> None:
    spec = {"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex"},
            "weighting": {"scheme": "soft-2.1"}, "influence": {"polish": "never"},
            "evaluation": {"robustness": False,
                           "frontier": {"reductions": list(RHOS), "k_fractions": [HARD_K]}}}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    report = run_correct(example_args(adult_example, tmp_path / "out", "--spec", str(spec_file)),
                         tmp_path / "out")
    resolved = report["spec"]
    expected = _independent_points(adult_example, resolved)
    points = {_key(p): p for p in report["frontier"]}
    assert sorted(points) == sorted(expected)
    n_eval = report["data"]["eval_rows"]
    smallest_group = min(g["n"] for g in report["before"]["eval"]["groups"].values())
    for key, ours in expected.items():
        theirs = points[key]["eval"]
        # The engine applies the head in the checkpoint's float32: a row or two may flip at 0.5.
        assert abs(theirs["accuracy"] - ours["accuracy"]) <= 3 / n_eval, key
        assert theirs["log_loss"] == pytest.approx(ours["log_loss"], rel=1e-4), key
        assert abs(theirs["demographic_parity_difference"] - ours["demographic_parity_difference"]) \
            <= 3 / smallest_group, key
    # The points differ from each other and from the input model: the test could fail.
    dps = [points[k]["eval"]["demographic_parity_difference"] for k in sorted(points)]
    assert len({round(v, 4) for v in dps}) == len(dps)
    assert all(v < report["before"]["eval"]["demographic_parity_difference"] - 0.02 for v in dps)


def test_a_soft_point_equals_a_separate_one_step_job_at_that_reduction(adult_example: ExampleInfo,
                                                                       tmp_path: Path) -> None:
    common = ("--objective", "demographic_parity", "--no-robust-eval", "--max-iterations", "1")
    report = run_correct(example_args(adult_example, tmp_path / "grid", *common), tmp_path / "grid")
    info = report["frontier_info"]
    assert info["scheme"] == "soft-2.3" and info["reductions"] == [round(0.1 * i, 1) for i in range(1, 11)]
    assert info["k_fractions"] == [0.01, 0.02, 0.05, 0.1] and info["skipped"] is None
    point = next(p for p in report["frontier"] if p.get("reduction") == 0.4)
    single = run_correct(example_args(adult_example, tmp_path / "single", *common, "--reduction", "0.4"),
                         tmp_path / "single")
    step = single["predicted"]["iterations"][0]
    assert step["step_scale"] == 1.0 and point["guard"]["accepted"] is True
    for split in ("audit", "eval"):
        for metric in ("accuracy", "log_loss", "demographic_parity_difference",
                       "equal_opportunity_difference", "equalized_odds_difference"):
            assert point[split][metric] == pytest.approx(single["after"][split][metric], abs=1e-12), \
                (split, metric)
        assert point[split]["groups"] == single["after"][split]["groups"]
    assert point["predicted"]["target_change"] == pytest.approx(step["predicted_target_change"], rel=1e-9)
    hard = [p for p in report["frontier"] if "k_fraction" in p]
    assert [p["scheme"] for p in hard] == ["hard"] * 4
    assert [p["weights"]["removed"] for p in hard] == sorted(p["weights"]["removed"] for p in hard)
