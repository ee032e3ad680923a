"""The robust sample: seeded, stratified by group with proportional shares, every row when small;
the report attacks exactly those rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import example_args, run_correct
from workers.engine.evaluation.metrics import SplitContext
from workers.engine.evaluation.robust_sample import draw_robust_sample
from workers.engine.examples.common import ExampleInfo
from workers.engine.io.datasets import Dataset


def _groups(sizes: dict[str, int]) -> np.ndarray:
    values = np.concatenate([np.full(n, name, dtype=object) for name, n in sizes.items()])
    np.random.default_rng(0).shuffle(values)
    return values


@pytest.mark.parametrize("size", [1, 7, 500, 2999])
def test_shares_are_proportional_and_rows_distinct(size: int) -> None:
    sizes = {"a": 1800, "b": 900, "c": 270, "d": 30}
    groups = _groups(sizes)
    sample = draw_robust_sample(groups, size, seed=4, split="eval")
    assert sample.rows is not None and sample.size == size and sample.split_rows == 3000
    assert np.unique(sample.rows).size == size and np.all(np.diff(sample.rows) > 0)
    for name, n in sizes.items():
        taken = int((groups[sample.rows] == name).sum())
        assert abs(taken - size * n / 3000) < 1, name


def test_seeded_per_job_and_split() -> None:
    groups = _groups({"a": 4000, "b": 1000})
    first = draw_robust_sample(groups, 800, seed=1, split="eval").rows
    assert first is not None
    np.testing.assert_array_equal(first, draw_robust_sample(groups, 800, seed=1, split="eval").rows)
    for other in (draw_robust_sample(groups, 800, seed=2, split="eval").rows,
                  draw_robust_sample(groups, 800, seed=1, split="audit").rows):
        assert other is not None and np.intersect1d(first, other).size < 400


@pytest.mark.parametrize("size", [None, 100, 150])
def test_every_row_when_the_split_is_not_larger(size: int | None) -> None:
    groups = _groups({"a": 60, "b": 40})
    sample = draw_robust_sample(groups, size, seed=0, split="audit")
    assert sample.rows is None and sample.size == 100
    values = np.arange(100)
    assert sample.take(values) is values
    assert sample.describe() == {"rows": 100, "split_rows": 100, "sampled": False, "seed": 0}


def test_the_frontier_subsample_nests_in_the_split_sample_with_its_frozen_rows() -> None:
    groups = _groups({"a": 2400, "b": 600})
    n = groups.shape[0]
    data = Dataset("eval", ("x",), np.arange(n, dtype=np.float32).reshape(n, 1), np.zeros(n), {"sex": groups})
    outer = draw_robust_sample(groups, 1500, seed=5, split="eval")
    assert outer.rows is not None
    head = torch.ones(2, dtype=torch.float64)
    context = SplitContext(data, groups, None, [], outer,
                           frozen={"pgd": data.features[outer.rows] + 0.5, "reflect": head})
    inner = context.subsampled(400)
    assert inner.robust.rows is not None and inner.robust.size == 400 and inner.robust.split_rows == n
    assert np.isin(inner.robust.rows, outer.rows).all() and np.all(np.diff(inner.robust.rows) > 0)
    assert abs(int((groups[inner.robust.rows] == "b").sum()) - 80) <= 1  # the shares stay 4 : 1
    # Each frozen (attacked) point stays with its row; a frozen head is shared as it is.
    np.testing.assert_array_equal(inner.frozen["pgd"], inner.robust_features + 0.5)
    assert inner.frozen["reflect"] is head and inner.gaps is context.gaps
    np.testing.assert_array_equal(context.subsampled(400).robust.rows, inner.robust.rows)  # seeded
    assert context.subsampled(None) is context and context.subsampled(1500) is context


def _independent_pgd_accuracy(weights: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray,
                              epsilon: float, steps: int) -> float:
    """L∞ PGD from the clean point (step 2.5ε/steps), written from the checkpoint's ReLU MLP."""
    layers = len(weights) // 2
    inputs = torch.tensor(x, dtype=torch.float32)
    target = torch.tensor(y, dtype=torch.float32)

    def forward(points: torch.Tensor) -> torch.Tensor:
        for layer in range(layers):
            points = points @ weights[f"{2 * layer}.weight"].T + weights[f"{2 * layer}.bias"]
            if layer < layers - 1:
                points = torch.relu(points)
        return points.reshape(-1)

    delta = torch.zeros_like(inputs)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(inputs + delta), target,
                                                                    reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + 2.5 * epsilon / steps * grad.sign()).clamp(-epsilon, epsilon)
    with torch.no_grad():
        return float(((forward(inputs + delta) >= 0).numpy() == (y == 1)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("rows", [600, None])
def test_the_report_attacks_the_seeded_sample(adult_example: ExampleInfo, tmp_path: Path,
                                             rows: int | None) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"seed": 3, "evaluation": {"robust_sample_rows": rows}}))
    report = run_correct(example_args(adult_example, tmp_path / "out", "--objective", "demographic_parity",
                                      "--no-frontier", "--threads", "1", "--spec", str(spec)),
                         tmp_path / "out")
    frame = pd.read_parquet(adult_example.out_dir / "eval.parquet")
    expected = draw_robust_sample(frame["sex"].astype(str).to_numpy(dtype=object), rows, 3, "eval")
    for when in ("before", "after"):
        entry = report[when]["eval"]["robustness"]["pgd-linf-0.05"]
        assert entry["rows"] == expected.size == (rows or len(frame))
        assert (entry["split_rows"], entry["sampled"], entry["seed"]) == (len(frame), rows is not None, 3)
        assert entry["early_stopping"] is True
    assert report["confidence"]["eval"]["robust_rows"] == expected.size
    # The input model's frozen robust accuracy is the full PGD against it, on the sample's rows.
    weights = load_file(adult_example.out_dir / "model.safetensors")
    features = frame.drop(columns=["income", "sex", "reference_logits"]).to_numpy(np.float32)
    labels = frame["income"].to_numpy(np.float64)
    independent = _independent_pgd_accuracy(weights, expected.take(features), expected.take(labels), 0.05, 10)
    frozen = report["before"]["eval"]["robust_accuracy_frozen"]
    assert frozen == pytest.approx(independent, abs=1.5 / expected.size)
    # Early stopping breaks at least what the full attack breaks.
    assert report["before"]["eval"]["robust_accuracy"] <= report["before"]["eval"]["robust_accuracy_frozen"]
    interval = report["confidence"]["eval"]["robust_accuracy"]["before"]
    assert interval["low"] < report["before"]["eval"]["robust_accuracy"] < interval["high"]
