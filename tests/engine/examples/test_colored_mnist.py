"""The colored-mnist example: a real image shortcut, and corrections that remove most of it.

Margins (measured at seed 0 on CPU, torch 2.13): the baseline cnn's eval demographic-parity
difference is +0.342 (equal opportunity +0.458) at accuracy 0.813. The suggested spec (last_layer,
qp weights) brings eval DP to 0.126 (−63 %) at accuracy 0.887; equal opportunity goes to 0.143
(−69 %) at 0.880. The tests ask for a ≥ 40 % relative cut at no more than 2 pp accuracy loss. One
full-scope iteration (≈ 70 s) brings eval DP to 0.296 at accuracy 0.828; that test asks only for
a smaller gap at no more than 2 pp accuracy loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_arrays
from safetensors.torch import load_file
from torch import nn

from tests.conftest import run_correct
from workers.engine.examples.builder import example_files
from workers.engine.examples.colored_mnist import TRAIN_AGREEMENT
from workers.engine.examples.common import ExampleInfo

REQUIRED_CUT = 0.40
MAX_ACCURACY_DROP = 0.02


def _plain_cnn(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """The example's cnn written by hand in plain torch."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 1))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _gaps(model: nn.Module, split: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and the DP / equal-opportunity differences (red − green), recomputed here."""
    with torch.no_grad():
        predicted = (model(torch.from_numpy(split["x"])).reshape(-1) > 0).numpy()
    red, positive = split["colour"] == 1, split["y"] == 1
    return {"accuracy": float(np.mean(predicted == positive)),
            "demographic_parity_difference": abs(float(predicted[red].mean() - predicted[~red].mean())),
            "equal_opportunity_difference": abs(float(predicted[red & positive].mean()
                                                      - predicted[~red & positive].mean()))}


def _split(example: ExampleInfo, role: str) -> dict[str, np.ndarray]:
    return load_arrays(str(example.out_dir / f"{role}.safetensors"))


def test_the_example_holds_a_colour_shortcut(colored_mnist_example: ExampleInfo) -> None:
    d = colored_mnist_example.out_dir
    assert all((d / name).is_file() for name in example_files("colored-mnist"))
    assert "CC BY-SA 3.0" in (d / "ATTRIBUTION").read_text() and "LeCun" in (d / "ATTRIBUTION").read_text()
    with safe_open(str(d / "train.safetensors"), "np") as handle:
        described = json.loads(handle.metadata()["softunlearn.dataset"])
    assert described == {"groups": {"colour": ["green", "red"]}}
    train, evaluation = _split(colored_mnist_example, "train"), _split(colored_mnist_example, "eval")
    assert train["x"].shape == (3000, 3, 28, 28) and evaluation["x"].shape == (1000, 3, 28, 28)
    for split in (train, evaluation):
        assert np.array_equal(split["y"], (split["digit"] >= 5).astype(split["y"].dtype))
    assert np.mean(train["colour"] == train["y"]) == pytest.approx(TRAIN_AGREEMENT, abs=0.03)
    assert abs(np.mean(evaluation["colour"] == evaluation["y"]) - 0.5) < 0.05
    model = _plain_cnn(load_file(str(d / "model.safetensors")))
    with torch.no_grad():
        logits = model(torch.from_numpy(evaluation["x"])).reshape(-1).double().numpy()
    assert np.allclose(logits, evaluation["reference_logits"], atol=1e-5)
    baseline = _gaps(model, evaluation)
    assert baseline["demographic_parity_difference"] > 0.25 and baseline["accuracy"] > 0.75


def _correct(example: ExampleInfo, out: Path, *extra: str) -> dict[str, Any]:
    d = example.out_dir
    return run_correct(["correct", "--model", str(d / "model.safetensors"), "--arch", str(d / "arch.json"),
                        "--train", str(d / "train.safetensors"), "--audit", str(d / "audit.safetensors"),
                        "--eval", str(d / "eval.safetensors"), "--schema", str(d / "schema.json"),
                        "--spec", str(d / "spec.json"), "--out", str(out), "--quiet", "--threads", "1",
                        *extra], out)


def assert_gap_cut(example: ExampleInfo, corrected: dict[str, torch.Tensor], report: dict[str, Any],
                   metric: str) -> None:
    """The corrected checkpoint, run as plain torch on eval, cuts the gap ≥ 40 % at ≤ 2 pp accuracy
    loss, and the report says the same numbers."""
    evaluation = _split(example, "eval")
    before = _gaps(_plain_cnn(load_file(str(example.out_dir / "model.safetensors"))), evaluation)
    after = _gaps(_plain_cnn(corrected), evaluation)
    for key in before:
        assert report["before"]["eval"][key] == pytest.approx(before[key], abs=1e-9), key
        assert report["after"]["eval"][key] == pytest.approx(after[key], abs=1e-9), key
    gap = f"{metric}_difference"
    assert after[gap] <= (1 - REQUIRED_CUT) * before[gap], (before, after)
    assert after["accuracy"] >= before["accuracy"] - MAX_ACCURACY_DROP, (before, after)


@pytest.mark.parametrize("metric", ["demographic_parity", "equal_opportunity"])
def test_last_layer_correction_removes_most_of_the_gap(colored_mnist_example: ExampleInfo, tmp_path: Path,
                                                       metric: str) -> None:
    out = tmp_path / "out"
    report = _correct(colored_mnist_example, out, "--objective", metric)
    assert report["target_met"] is True
    assert report["model"]["influence_scope"] == "last_layer"
    assert_gap_cut(colored_mnist_example, load_file(str(out / "model.safetensors")), report, metric)


def test_full_scope_correction_runs_and_shrinks_the_gap(colored_mnist_example: ExampleInfo,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = _correct(colored_mnist_example, out, "--scope", "full", "--max-iterations", "1", "--no-frontier",
                      "--no-robust-eval")  # neither is asserted here; both are full-network passes
    assert report["model"]["influence_scope"] == "full"
    corrected = load_file(str(out / "model.safetensors"))
    original = load_file(str(colored_mnist_example.out_dir / "model.safetensors"))
    assert not torch.equal(corrected["0.weight"], original["0.weight"])  # the convolutions moved too
    evaluation = _split(colored_mnist_example, "eval")
    before, after = _gaps(_plain_cnn(original), evaluation), _gaps(_plain_cnn(corrected), evaluation)
    assert after["demographic_parity_difference"] < before["demographic_parity_difference"]
    assert after["accuracy"] >= before["accuracy"] - MAX_ACCURACY_DROP
