"""Hard-label fairness metrics agree with Fairlearn's definitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from workers.engine.evaluation.metrics import classification_metrics

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")

DIFFERENCES = ("demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference")


def _fairlearn(proba: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    # Plain lists: Fairlearn rejects a one-row numpy sensitive feature ("too many dimensions").
    kwargs: dict[str, Any] = {"y_true": labels.astype(int).tolist(),
                              "y_pred": (proba >= 0.5).astype(int).tolist(),
                              "sensitive_features": groups.tolist()}
    return {name: float(getattr(fairlearn_metrics, name)(**kwargs)) for name in DIFFERENCES}


def _assert_matches_fairlearn(proba: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    ours = classification_metrics(proba, labels, groups)
    for name, expected in _fairlearn(proba, labels, groups).items():
        assert ours[name] == pytest.approx(expected, abs=1e-12, rel=0), name
    return ours


@pytest.mark.parametrize("seed", range(5))
def test_differences_match_fairlearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    groups = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]).astype(object)
    labels = rng.integers(0, 2, n).astype(np.float64)
    proba = np.clip(rng.normal(0.5, 0.25, n) + 0.1 * (groups == "a"), 0, 1)
    _assert_matches_fairlearn(proba, labels, groups)


def _six_groups(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six groups of 1–5 rows plus a big one; "nopos" has no positives, "noneg" no negatives."""
    rng = np.random.default_rng(seed)
    sizes = {"big": 40, "nopos": 4, "noneg": 5, "one": 1, "two": 2, "three": 3}
    groups = np.concatenate([[name] * size for name, size in sizes.items()]).astype(object)
    labels = rng.integers(0, 2, groups.size).astype(np.float64)
    labels[groups == "nopos"] = 0.0
    labels[groups == "noneg"] = 1.0
    proba = rng.uniform(0, 1, groups.size)
    # Predict positives where there are none (and negatives where all are positive), so that
    # dropping such a group or scoring its empty rate as anything but 0 changes the answer.
    proba[groups == "nopos"] = 0.9
    proba[groups == "noneg"] = 0.1
    return proba, labels, groups


@pytest.mark.parametrize("seed", range(8))
def test_groups_without_positives_or_negatives_match_fairlearn(seed: int) -> None:
    proba, labels, groups = _six_groups(seed)
    ours = _assert_matches_fairlearn(proba, labels, groups)
    assert ours["groups"]["nopos"]["tpr"] is None
    assert ours["groups"]["nopos"]["positives"] == 0
    assert ours["groups"]["noneg"]["fpr"] is None
    assert ours["groups"]["noneg"]["negatives"] == 0


def test_empty_group_rates_count_as_zero() -> None:
    """The old behaviour (leave the group out) would give equal opportunity 0 here, Fairlearn 1."""
    labels = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    proba = np.array([0.9, 0.1, 0.9, 0.8, 0.9, 0.9])
    groups = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
    ours = _assert_matches_fairlearn(proba, labels, groups)
    assert ours["equal_opportunity_difference"] == 1.0
    assert ours["equalized_odds_difference"] == 1.0


def test_single_row_groups_match_fairlearn() -> None:
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    proba = np.array([0.9, 0.9, 0.1, 0.2])
    groups = np.array(["a", "b", "c", "d"], dtype=object)
    ours = _assert_matches_fairlearn(proba, labels, groups)
    assert ours["demographic_parity_difference"] == 1.0


@pytest.mark.parametrize("labels", [[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
def test_split_with_one_class_matches_fairlearn(labels: list[float]) -> None:
    proba = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    groups = np.array(["a", "a", "b", "b", "b"], dtype=object)
    ours = _assert_matches_fairlearn(proba, np.array(labels), groups)
    assert ours["demographic_parity_difference"] == pytest.approx(2 / 3)
    assert ours["equalized_odds_difference"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_single_group_split_matches_fairlearn(n: int) -> None:
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 2, n).astype(np.float64)
    proba = rng.uniform(0, 1, n)
    groups = np.array(["only"] * n, dtype=object)
    ours = _assert_matches_fairlearn(proba, labels, groups)
    assert all(ours[name] == 0.0 for name in DIFFERENCES)


def test_group_table_and_log_loss() -> None:
    proba = np.array([0.9, 0.2, 0.6, 0.4])
    labels = np.array([1.0, 0.0, 0.0, 1.0])
    groups = np.array(["a", "a", "b", "b"], dtype=object)
    out = classification_metrics(proba, labels, groups)
    assert out["accuracy"] == 0.5
    assert out["groups"]["a"] == {"n": 2, "positives": 1, "negatives": 1, "selection_rate": 0.5,
                                  "tpr": 1.0, "fpr": 0.0, "accuracy": 1.0}
    assert out["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
