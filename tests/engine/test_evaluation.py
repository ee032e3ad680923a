"""Hard-label fairness metrics agree with Fairlearn's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine.evaluation import classification_metrics

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_differences_match_fairlearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    groups = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]).astype(object)
    labels = rng.integers(0, 2, n).astype(np.float64)
    proba = np.clip(rng.normal(0.5, 0.25, n) + 0.1 * (groups == "a"), 0, 1)
    ours = classification_metrics(proba, labels, groups)
    predicted = (proba >= 0.5).astype(int)
    kwargs = {"y_true": labels.astype(int), "y_pred": predicted, "sensitive_features": groups}
    assert ours["demographic_parity_difference"] == pytest.approx(
        fairlearn_metrics.demographic_parity_difference(**kwargs))
    assert ours["equal_opportunity_difference"] == pytest.approx(
        fairlearn_metrics.equal_opportunity_difference(**kwargs))
    assert ours["equalized_odds_difference"] == pytest.approx(
        fairlearn_metrics.equalized_odds_difference(**kwargs))


def test_group_table_and_log_loss() -> None:
    proba = np.array([0.9, 0.2, 0.6, 0.4])
    labels = np.array([1.0, 0.0, 0.0, 1.0])
    groups = np.array(["a", "a", "b", "b"], dtype=object)
    out = classification_metrics(proba, labels, groups)
    assert out["accuracy"] == 0.5
    assert out["groups"]["a"] == {"n": 2, "selection_rate": 0.5, "tpr": 1.0, "fpr": 0.0, "accuracy": 1.0}
    assert out["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
