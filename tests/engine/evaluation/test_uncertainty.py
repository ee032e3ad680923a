"""Paired bootstrap intervals: exact point estimates, coverage of a known truth, input checks."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from workers.engine.evaluation.metrics import classification_metrics
from workers.engine.evaluation.uncertainty import METHOD, BootstrapConfig, SplitPredictions, paired_bootstrap

METRICS = ("accuracy", "log_loss", "demographic_parity_difference", "equal_opportunity_difference",
           "equalized_odds_difference")


Case = tuple[np.ndarray, np.ndarray, SplitPredictions, SplitPredictions]


def _random_case(seed: int, n: int = 800) -> Case:
    rng = np.random.default_rng(seed)
    groups = rng.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    labels = rng.integers(0, 2, n).astype(np.float64)
    before = rng.uniform(0, 1, n)
    after = np.clip(before + rng.normal(0, 0.2, n), 0, 1)
    return (labels, groups, SplitPredictions(before, rng.uniform(size=n) < 0.7),
            SplitPredictions(after, rng.uniform(size=n) < 0.6))


@pytest.mark.parametrize("seed", range(3))
def test_estimates_equal_classification_metrics(seed: int) -> None:
    labels, groups, before, after = _random_case(seed)
    out = paired_bootstrap(labels, groups, before, after, BootstrapConfig(n_boot=200, seed=seed))
    point_before = classification_metrics(before.proba, labels, groups)
    point_after = classification_metrics(after.proba, labels, groups)
    for name in METRICS:
        assert out[name]["before"]["estimate"] == point_before[name]
        assert out[name]["after"]["estimate"] == point_after[name]
        assert out[name]["change"]["estimate"] == point_after[name] - point_before[name]
        for side in ("before", "after", "change"):
            assert out[name][side]["low"] <= out[name][side]["high"]
    assert before.robust_correct is not None and after.robust_correct is not None
    assert out["robust_accuracy"]["before"]["estimate"] == before.robust_correct.mean()
    assert out["robust_accuracy"]["after"]["estimate"] == after.robust_correct.mean()


def test_output_is_json_and_reproducible() -> None:
    labels, groups, before, after = _random_case(7)
    config = BootstrapConfig(n_boot=150, level=0.9, seed=3)
    out = paired_bootstrap(labels, groups, before, after, config)
    assert json.loads(json.dumps(out)) == out
    assert out == paired_bootstrap(labels, groups, before, after, config)
    assert (out["n_boot"], out["level"], out["seed"], out["method"]) == (150, 0.9, 3, METHOD)
    other_seed = paired_bootstrap(labels, groups, before, after,
                                  BootstrapConfig(n_boot=150, level=0.9, seed=4))
    assert other_seed["accuracy"]["change"]["low"] != out["accuracy"]["change"]["low"]


def test_robust_accuracy_needs_both_models() -> None:
    labels, groups, before, after = _random_case(1)
    out = paired_bootstrap(labels, groups, before, SplitPredictions(after.proba), BootstrapConfig(n_boot=100))
    assert "robust_accuracy" not in out
    assert set(METRICS) <= out.keys()


def test_interval_bounds_agree_with_a_direct_resample() -> None:
    """A slow reference: resample indices within groups, recompute with classification_metrics."""
    labels, groups, before, after = _random_case(2, n=120)
    out = paired_bootstrap(labels, groups, before, after, BootstrapConfig(n_boot=4000, seed=5))
    rng = np.random.default_rng(11)
    members = [np.flatnonzero(groups == g) for g in ("a", "b", "c", "d")]
    changes: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(4000):
        rows = np.concatenate([rng.choice(m, size=m.size) for m in members])
        first = classification_metrics(before.proba[rows], labels[rows], groups[rows])
        second = classification_metrics(after.proba[rows], labels[rows], groups[rows])
        for name in METRICS:
            changes[name].append(second[name] - first[name])
    for name in METRICS:
        low, high = np.quantile(changes[name], [0.025, 0.975])
        # Two independent 4000-draw bootstraps: their 2.5 % quantiles differ by Monte Carlo noise
        # of about 0.1 interval widths at most.
        width = high - low
        assert out[name]["change"]["low"] == pytest.approx(low, abs=0.1 * width), name
        assert out[name]["change"]["high"] == pytest.approx(high, abs=0.1 * width), name


def _sampled_case(seed: int, n: int = 900, m: int = 300) -> tuple[Case, np.ndarray]:
    """A case whose robust outcomes are measured on ``m`` of the ``n`` rows."""
    labels, groups, before, after = _random_case(seed, n)
    rows = np.sort(np.random.default_rng(seed + 100).choice(n, size=m, replace=False))
    rng = np.random.default_rng(seed + 200)
    robust_before = rng.uniform(size=m) < 0.5
    robust_after = robust_before | (rng.uniform(size=m) < 0.15)
    frozen_after = robust_before | (rng.uniform(size=m) < 0.3)
    return (labels, groups, SplitPredictions(before.proba, robust_before, robust_before, rows),
            SplitPredictions(after.proba, robust_after, frozen_after, rows)), rows


def test_a_robust_sample_is_resampled_on_its_own_rows() -> None:
    (labels, groups, before, after), rows = _sampled_case(4)
    out = paired_bootstrap(labels, groups, before, after, BootstrapConfig(n_boot=4000, seed=2))
    assert before.robust_correct is not None and after.robust_correct is not None
    assert out["robust_rows"] == rows.size
    assert out["robust_accuracy"]["before"]["estimate"] == pytest.approx(before.robust_correct.mean())
    assert out["robust_accuracy"]["after"]["estimate"] == pytest.approx(after.robust_correct.mean())
    # A slow reference: resample the sample's rows within their groups.
    rng = np.random.default_rng(9)
    sample_groups = groups[rows]
    members = [np.flatnonzero(sample_groups == g) for g in ("a", "b", "c", "d")]
    gain = after.robust_correct.astype(float) - before.robust_correct.astype(float)
    changes = [gain[np.concatenate([rng.choice(m, size=m.size) for m in members])].mean()
               for _ in range(4000)]
    low, high = np.quantile(changes, [0.025, 0.975])
    width = high - low
    assert out["robust_accuracy"]["change"]["low"] == pytest.approx(low, abs=0.1 * width)
    assert out["robust_accuracy"]["change"]["high"] == pytest.approx(high, abs=0.1 * width)
    # About 7.5 % of the 300 rows gain: the change's interval is ≈ 0.06 wide; resampled as if
    # measured on all 900 rows it would be ≈ 0.035.
    assert width > 0.05


def test_a_robust_sample_leaves_the_other_intervals_as_they_were() -> None:
    (labels, groups, before, after), _ = _sampled_case(5)
    config = BootstrapConfig(n_boot=300, seed=7)
    with_robust = paired_bootstrap(labels, groups, before, after, config)
    without = paired_bootstrap(labels, groups, SplitPredictions(before.proba), SplitPredictions(after.proba),
                               config)
    for name in METRICS:
        assert with_robust[name] == without[name], name


@pytest.mark.parametrize("after_rows", [None, np.arange(300), np.arange(-1, 299)])
def test_robust_rows_must_match(after_rows: np.ndarray | None) -> None:
    (labels, groups, before, after), _ = _sampled_case(6)
    changed = SplitPredictions(after.proba, after.robust_correct, after.frozen_correct, after_rows)
    with pytest.raises(ValueError, match="same robust rows"):
        paired_bootstrap(labels, groups, before, changed, BootstrapConfig(n_boot=100))


def test_robust_outcomes_must_have_the_sample_shape() -> None:
    (labels, groups, before, after), rows = _sampled_case(7)
    assert after.robust_correct is not None
    short = SplitPredictions(after.proba, after.robust_correct[:-1], after.frozen_correct, rows)
    with pytest.raises(ValueError, match=r"after.robust_correct has shape \(299,\), expected \(300,\)"):
        paired_bootstrap(labels, groups, before, short, BootstrapConfig(n_boot=100))
    outside = np.append(rows[:-1], labels.shape[0])
    with pytest.raises(ValueError, match="indices into the 900 rows"):
        paired_bootstrap(labels, groups, SplitPredictions(before.proba, before.robust_correct,
                                                          before.frozen_correct, outside),
                         SplitPredictions(after.proba, after.robust_correct, after.frozen_correct, outside),
                         BootstrapConfig(n_boot=100))


# Coverage on a population with a known truth. Three groups of fixed sizes (the bootstrap treats
# group sizes as design quantities, so the simulated audits draw them fixed too), P(y=1 | g) = PI[g],
# a feature x | y ~ N(SHIFT·y, 1), and two fixed classifiers "predict 1 when x >= threshold[g]".
# Selection rates are ordered g0 < g1 < g2 both before and after, with gaps of several standard
# errors, so that max − min is (nearly always) the same pair of groups and is smooth.
SIZES = np.array([300, 180, 120])
PI = np.array([0.15, 0.45, 0.8])
SHIFT = 1.5
THRESHOLD_BEFORE = np.array([0.75, 0.75, 0.75])
THRESHOLD_AFTER = np.array([0.5, 0.75, 1.0])
TRIALS = 200


def _survival(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _population_truth(thresholds: np.ndarray) -> dict[str, float]:
    tpr = np.array([_survival(t - SHIFT) for t in thresholds])
    fpr = np.array([_survival(t) for t in thresholds])
    selection = PI * tpr + (1 - PI) * fpr
    accuracy = PI * tpr + (1 - PI) * (1 - fpr)
    return {"accuracy": float(accuracy @ SIZES / SIZES.sum()),
            "demographic_parity_difference": float(selection.max() - selection.min())}


def _audit_sample(rng: np.random.Generator) -> Case:
    groups = np.repeat(np.arange(SIZES.size), SIZES)
    labels = (rng.uniform(size=groups.size) < PI[groups]).astype(np.float64)
    x = rng.normal(size=groups.size) + SHIFT * labels
    before = SplitPredictions(1 / (1 + np.exp(-(x - THRESHOLD_BEFORE[groups]))))
    after = SplitPredictions(1 / (1 + np.exp(-(x - THRESHOLD_AFTER[groups]))))
    return labels, groups.astype(str).astype(object), before, after


@pytest.fixture(scope="module")
def coverage() -> dict[str, float]:
    before, after = _population_truth(THRESHOLD_BEFORE), _population_truth(THRESHOLD_AFTER)
    truth = {name: after[name] - before[name] for name in before}
    rng = np.random.default_rng(2024)
    hits = dict.fromkeys(truth, 0)
    for trial in range(TRIALS):
        out: dict[str, Any] = paired_bootstrap(*_audit_sample(rng), BootstrapConfig(n_boot=300, seed=trial))
        for name, value in truth.items():
            hits[name] += out[name]["change"]["low"] <= value <= out[name]["change"]["high"]
    return {name: count / TRIALS for name, count in hits.items()}


# Percentile intervals at this n (and n_boot = 300) run a little short of 0.95: 4500 simulated
# audits of this design covered 0.938 (accuracy change) and 0.937 (DP change). Over 200 audits the
# covered fraction then has standard deviation sqrt(0.938·0.062/200) ≈ 0.017, so 0.88 is ≈ 3.4
# and 0.99 ≈ 3.0 standard deviations from it. Unpaired resamples of before and after would give
# intervals 2.3–2.6× wider here (the two models share most errors), covering ≈ 1.0.
@pytest.mark.parametrize("metric", ["accuracy", "demographic_parity_difference"])
def test_change_interval_covers_the_true_change(coverage: dict[str, float], metric: str) -> None:
    assert 0.88 <= coverage[metric] <= 0.99


def test_no_change_is_within_noise_and_big_change_is_not() -> None:
    labels, groups, before, _ = _random_case(4)
    same = paired_bootstrap(labels, groups, before, SplitPredictions(before.proba.copy()), BootstrapConfig())
    for name in METRICS:
        assert same[name]["change"] == {"estimate": 0.0, "low": 0.0, "high": 0.0, "within_noise": True}
    assert same["predictions_changed"] == 0
    perfect = SplitPredictions(np.where(labels == 1, 0.9, 0.1))
    big = paired_bootstrap(labels, groups, before, perfect, BootstrapConfig())
    assert big["accuracy"]["change"]["low"] > 0.3
    assert big["accuracy"]["change"]["within_noise"] is False
    assert big["log_loss"]["change"]["within_noise"] is False


def test_predictions_changed_counts_hard_label_flips() -> None:
    labels = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    groups = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    before = SplitPredictions(np.array([0.2, 0.5, 0.49, 0.7, 0.1, 0.9]))
    # 0.2→0.3 and 0.7→0.99 keep their label; 0.5→0.49999, 0.49→0.5 and 0.1→0.6 flip; 0.9→0.5 keeps 1.
    after = SplitPredictions(np.array([0.3, 0.49999, 0.5, 0.99, 0.6, 0.5]))
    out = paired_bootstrap(labels, groups, before, after, BootstrapConfig(n_boot=100))
    assert out["predictions_changed"] == 3


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": np.zeros(5)}, "expected"),
    ({"groups": np.array(["a"] * 5, dtype=object)}, "groups has shape"),
    ({"after": SplitPredictions(np.full(5, 0.5))}, "after.proba"),
    ({"before": SplitPredictions(np.full(6, 0.5), np.ones(5, dtype=bool))}, "before.robust_correct"),
    ({"labels": np.full(6, 2.0)}, "0 or 1"),
    ({"config": BootstrapConfig(level=1.0)}, "level"),
    ({"config": BootstrapConfig(level=0.0)}, "level"),
    ({"config": BootstrapConfig(n_boot=99)}, "n_boot"),
    ({"config": BootstrapConfig(n_boot=100_001)}, "n_boot"),
    ({"labels": np.zeros(0), "groups": np.zeros(0), "before": SplitPredictions(np.zeros(0)),
      "after": SplitPredictions(np.zeros(0))}, "at least one row"),
])
def test_bad_input_raises(change: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"labels": np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
                                 "groups": np.array(["a", "a", "a", "b", "b", "b"], dtype=object),
                                 "before": SplitPredictions(np.full(6, 0.4)),
                                 "after": SplitPredictions(np.full(6, 0.6)),
                                 "config": BootstrapConfig(n_boot=100)}
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(**arguments)
