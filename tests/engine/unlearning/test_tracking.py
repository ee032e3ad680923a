"""The guard on correction steps: every step is checked, the returned model is never worse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.engine.small_data import SmallExample, write_small_example
from workers.cli.main import main
from workers.engine.config import GuardConfig
from workers.engine.evaluation.metrics import classification_metrics
from workers.engine.unlearning.tracking import Measurement, rejection

GUARD = GuardConfig()
ORIGIN = Measurement(target=0.20, hard=0.25, utility=0.40, accuracy=0.85, robust_accuracy=None)


def _candidate(**changes: float) -> Measurement:
    values = {"target": 0.10, "hard": 0.12, "utility": 0.42, "accuracy": 0.84, "robust_accuracy": None}
    values.update(changes)
    return Measurement(**values)  # type: ignore[arg-type]


def test_a_step_that_delivers_within_the_limits_is_accepted() -> None:
    assert rejection(_candidate(), ORIGIN, ORIGIN, GUARD, 0.0, 0.12) is None


@pytest.mark.parametrize(("changes", "predicted", "words"), [
    ({"target": 0.21}, 0.1, "did not shrink"),
    ({"target": -0.25}, 0.1, "did not shrink"),
    ({"hard": 0.26}, 0.1, "hard-label audit metric"),
    ({"target": 0.17}, 0.1, "min_progress_ratio"),
    ({"utility": 0.46}, 0.1, "log-loss"),
    ({"accuracy": 0.81}, 0.1, "audit accuracy"),
])
def test_each_guard_rule_refuses_its_case(changes: dict[str, float], predicted: float, words: str) -> None:
    reason = rejection(_candidate(**changes), ORIGIN, ORIGIN, GUARD, 0.0, predicted)
    assert reason is not None and words in reason


def test_utility_tolerance_widens_the_log_loss_limit() -> None:
    assert rejection(_candidate(utility=0.46), ORIGIN, ORIGIN, GUARD, 0.02, 0.1) is None


def _robust(correct: np.ndarray) -> Measurement:
    return Measurement(target=0.8, hard=None, utility=0.41, accuracy=0.85,
                       robust_accuracy=float(correct.mean()), robust_correct=correct)


def test_robustness_steps_must_raise_adaptive_robust_accuracy_beyond_noise() -> None:
    """1,000 audit rows, half right under attack. Winning 3 rows net out of 50 that changed is a
    paired sign test's noise (z ≈ 0.4); winning 40 of 60 (net 20, z ≈ 2.6) is a real gain."""
    base = np.zeros(1000, dtype=bool)
    base[:500] = True
    current = Measurement(target=0.9, hard=None, utility=0.4, accuracy=0.85, robust_accuracy=0.5,
                          robust_correct=base)
    noise = base.copy()
    noise[500:527] = True   # 27 gained
    noise[:24] = False      # 24 lost
    real = base.copy()
    real[500:540] = True    # 40 gained
    real[:20] = False       # 20 lost
    assert "beyond noise" in str(rejection(_robust(noise), current, current, GUARD, 0.0, None))
    assert "beyond noise" in str(rejection(_robust(base.copy()), current, current, GUARD, 0.0, None))
    assert rejection(_robust(real), current, current, GUARD, 0.0, None) is None


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SmallExample:
    """German-credit sized data with a 10-row third group in every split."""
    return write_small_example(tmp_path_factory.mktemp("small"), small_group_rows=10)


def _plain_model(example: SmallExample, checkpoint: Path) -> torch.nn.Sequential:
    arch = json.loads((example.root / "arch.json").read_text())
    widths = [arch["in_features"], *arch["hidden"], 1]
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    model.load_state_dict(load_file(str(checkpoint)), strict=True)
    return model.eval()


def _independent(example: SmallExample, checkpoint: Path, split: str) -> dict[str, float]:
    """Accuracy and DP difference recomputed with plain torch and Fairlearn's definition."""
    frame = pd.read_parquet(example.root / f"{split}.parquet")
    columns = [c for c in frame.columns if c.startswith("f")]
    features = np.array(frame[columns].to_numpy(np.float32), copy=True)
    with torch.no_grad():
        proba = torch.sigmoid(_plain_model(example, checkpoint)(torch.from_numpy(features))).reshape(-1)
    metrics = classification_metrics(proba.numpy().astype(np.float64), frame["good"].to_numpy(np.float64),
                                     frame["age_group"].to_numpy())
    return {"accuracy": metrics["accuracy"], "dp": metrics["demographic_parity_difference"]}


def test_a_destructive_network_step_is_shortened_or_undone(small: SmallExample, tmp_path: Path) -> None:
    """Pure gradient ascent (NegGrad with no retained term) at a large rate wrecks the model;
    the guard must hand back a model no worse than the input on the audit target."""
    code = main(small.args(tmp_path, "--objective", "demographic_parity", "--method", "gradient_ascent",
                           "--alpha", "0", "--learning-rate", "0.05", "--epochs", "40",
                           "--no-robust-eval"))
    assert code in (0, 3)
    report = json.loads((tmp_path / "report.json").read_text())
    attempts = (report["predicted"]["iterations"][0]["line_search"] if report["predicted"]["iterations"]
                else report["tracking"]["undone"][0]["attempts"])
    assert attempts[0]["rejected"] is not None, "the full NegGrad step should have been refused"
    original = _independent(small, small.root / "model.safetensors", "audit")
    corrected = _independent(small, tmp_path / "model.safetensors", "audit")
    assert corrected["dp"] <= original["dp"] + 1e-12, (original, corrected)
    assert corrected["accuracy"] >= original["accuracy"] - GUARD.max_accuracy_drop, (original, corrected)
    assert report["after"]["audit"]["accuracy"] == pytest.approx(corrected["accuracy"], abs=1e-12)


def test_noise_sized_change_is_never_a_met_target(small: SmallExample, tmp_path: Path) -> None:
    code = main(small.args(tmp_path, "--objective", "demographic_parity"))
    report = json.loads((tmp_path / "report.json").read_text())
    codes = {w["code"] for w in report["warnings"]}
    change = report["confidence"]["eval"]["demographic_parity_difference"]["change"]
    assert change["within_noise"], change
    assert report["target_met"] is False and code == 3
    assert {"change_within_noise", "small_group"} <= codes, codes
    assert any("'unknown'" in w["message"] and "10 rows" in w["message"] for w in report["warnings"])
    changed = report["confidence"]["eval"]["predictions_changed"]
    assert ("few_predictions_changed" in codes) == (changed < 20), (changed, codes)
    # the before numbers are the user's model, recomputed independently
    original = _independent(small, small.root / "model.safetensors", "eval")
    assert report["before"]["eval"]["accuracy"] == pytest.approx(original["accuracy"], abs=1e-12)
    dp_before = report["before"]["eval"]["demographic_parity_difference"]
    assert dp_before == pytest.approx(original["dp"], abs=1e-12)


def test_first_step_overshoot_on_a_robustness_target_is_shortened(small: SmallExample,
                                                                   tmp_path: Path) -> None:
    """ρ = 1 on the adversarial log-loss asks the first Newton step for far more than the
    linearization holds; the full step is refused and a shorter one (or none) is kept."""
    code = main(small.args(tmp_path, "--objective", "robustness", "--reduction", "1.0",
                           "--utility-tolerance", "0", "--no-robust-eval"))
    assert code == 3
    report = json.loads((tmp_path / "report.json").read_text())
    undone = [{"line_search": row["attempts"]} for row in report["tracking"]["undone"]]
    first = (report["predicted"]["iterations"] or undone)[0]
    assert first["line_search"][0]["rejected"] is not None
    assert report["target"]["goal_reached"] is False
    assert {"target_not_met"} <= {w["code"] for w in report["warnings"]}
    tracked = report["tracking"]
    assert tracked["result"]["robust_accuracy"] >= tracked["input"]["robust_accuracy"]
    assert abs(report["target"]["audit_after"]) <= abs(report["target"]["audit_before"])


def test_an_infeasible_first_qp_step_names_a_bound_that_works(small: SmallExample, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    box = ("--scheme", "qp", "--lower", "-0.05", "--upper", "0.05")
    assert main(small.args(tmp_path / "refused", "--objective", "demographic_parity", "--reduction", "1.0",
                           *box)) == 2
    assert not (tmp_path / "refused").exists()
    match = re.search(r"objective\.reduction at most ([0-9.]+)", capsys.readouterr().err)
    assert match is not None
    code = main(small.args(tmp_path / "followed", "--objective", "demographic_parity", "--reduction",
                           match.group(1), *box))
    assert code in (0, 3)
    assert (tmp_path / "followed" / "report.json").exists()
