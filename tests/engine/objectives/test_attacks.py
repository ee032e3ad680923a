"""FGSM/PGD attacks: the early-stopped attack breaks every row the full attack breaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.config import AttackConfig, AttackNorm
from workers.engine.io.architecture import parse_arch
from workers.engine.models.head_model import HeadModel
from workers.engine.models.training import train_mlp
from workers.engine.objectives.attacks import attack_inputs


@pytest.fixture(scope="module")
def problem() -> tuple[HeadModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 6)).astype(np.float32)
    y = ((x[:, 0] - 0.7 * x[:, 1] + 0.3 * np.sin(3 * x[:, 2]) + 0.3 * rng.logistic(size=1500)) > 0)
    arch = parse_arch({"type": "mlp", "in_features": 6, "hidden": [16, 8], "activation": "tanh"})
    network = train_mlp(arch, x[:1000], y[:1000].astype(np.float32), seed=0, epochs=30, batch_size=64,
                        lr=1e-2, weight_decay=0.0)
    model = HeadModel.from_state(arch, network.state_dict(), torch.device("cpu"))
    return model, x[1000:], y[1000:].astype(np.float64)


def _correct(model: HeadModel, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    correct: np.ndarray = (model.logits(points).cpu().numpy() >= 0) == (labels == 1)
    return correct


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_stopping_breaks_a_superset_of_the_full_attack(
        problem: tuple[HeadModel, np.ndarray, np.ndarray], norm: AttackNorm) -> None:
    model, x, y = problem
    config = AttackConfig(kind="pgd", norm=norm, epsilon=0.3 if norm == "linf" else 0.6, steps=10)
    full = attack_inputs(model, x, y, config)
    stopped = attack_inputs(model, x, y, config, early_stop=True)
    full_correct, stopped_correct = _correct(model, full, y), _correct(model, stopped, y)
    clean = _correct(model, x.astype(np.float64), y)
    # The attack must do something here, or the comparison says nothing.
    assert full_correct.mean() < clean.mean() - 0.1
    assert not (stopped_correct & ~full_correct).any()
    # A row never misclassified on the way takes exactly the full attack's steps.
    standing = stopped_correct
    np.testing.assert_allclose(stopped[standing], full[standing], atol=1e-6)
    # A row misclassified from the start is not moved; every point stays in the ball.
    np.testing.assert_array_equal(stopped[~clean], x[~clean].astype(np.float64))
    distance = stopped - x
    radius = np.abs(distance).max(axis=1) if norm == "linf" else np.linalg.norm(distance, axis=1)
    assert radius.max() <= config.epsilon + 1e-5


def test_fgsm_early_stopped_is_the_fgsm_step_on_rows_still_correct(
        problem: tuple[HeadModel, np.ndarray, np.ndarray]) -> None:
    model, x, y = problem
    config = AttackConfig(kind="fgsm", epsilon=0.2)
    full = attack_inputs(model, x, y, config)
    stopped = attack_inputs(model, x, y, config, early_stop=True)
    clean = _correct(model, x.astype(np.float64), y)
    np.testing.assert_allclose(stopped[clean], full[clean], atol=1e-6)
    np.testing.assert_array_equal(stopped[~clean], x[~clean].astype(np.float64))
