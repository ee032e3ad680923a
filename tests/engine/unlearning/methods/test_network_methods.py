"""Network unlearning methods on the real Adult example, with soft and hard influence weights.

The weights are computed here from the engine pieces the pipeline uses (polished head,
influences of the audit demographic-parity surrogate and of the audit log-loss, soft-2.3 for a
60 % reduction, or hard removal of 5 %), so these tests do not depend on the pipeline wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from workers.engine.config import MethodConfig, WeightingConfig
from workers.engine.errors import NonFiniteError
from workers.engine.examples.common import ExampleInfo
from workers.engine.influence.head import HeadProblem, factorize, fit_head, hessian, influences
from workers.engine.io.architecture import ArchSpec, load_arch
from workers.engine.io.checkpoint import load_checkpoint
from workers.engine.io.datasets import Dataset, load_dataset, load_schema
from workers.engine.models.head_model import HeadModel
from workers.engine.models.training import build_model
from workers.engine.objectives.surrogates import GroupGap, MeanLogLoss
from workers.engine.unlearning.methods.base import NetworkTask
from workers.engine.unlearning.methods.common import bernoulli_kl, per_sample_bce
from workers.engine.unlearning.methods.registry import NETWORK_METHODS, apply_network_method
from workers.engine.weights import solve_weights

State = dict[str, torch.Tensor]


@dataclass
class Setting:
    arch: ArchSpec
    state: State
    train: Dataset
    eval: Dataset
    soft: np.ndarray
    hard: np.ndarray

    @property
    def features(self) -> torch.Tensor:
        return torch.tensor(self.train.features, dtype=torch.float32)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.train.labels, dtype=torch.float32)


def _eps(arch: ArchSpec, state: State, train: Dataset, audit: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Soft-2.3 (60 % of the audit DP surrogate) and hard (5 %) weights, as the pipeline makes them."""
    model = HeadModel.from_state(arch, state, torch.device("cpu"))
    ones = torch.ones(train.n, dtype=torch.float64)
    problem = HeadProblem(model.head_design(train.features), torch.from_numpy(train.labels).double(), 1.0)
    theta, _ = fit_head(problem, model.theta(), ones, 1e-8, 50, "polish")
    design = model.design(audit.features)
    target = GroupGap.build("demographic_parity", design, audit.labels, audit.sensitive["sex"], None, "audit")
    value, target_grad = target.evaluate(theta)
    _, utility_grad = MeanLogLoss(design, torch.from_numpy(audit.labels).double()).evaluate(theta)
    factor = factorize(hessian(problem, theta, ones), "influence")
    a = np.sign(value) * influences(problem, theta, factor.solve(target_grad, "influence")).numpy()
    b = influences(problem, theta, factor.solve(utility_grad, "influence")).numpy()
    reduction = 0.6 * abs(value)
    soft = solve_weights(a, b, reduction, WeightingConfig(scheme="soft-2.3")).eps
    hard = solve_weights(a, b, reduction, WeightingConfig(scheme="hard", k_fraction=0.05)).eps
    return soft, hard


@pytest.fixture(scope="module")
def setting(adult_example: ExampleInfo) -> Setting:
    d = adult_example.out_dir
    arch, schema = load_arch(d / "arch.json"), load_schema(d / "schema.json")
    state = load_checkpoint(d / "model.safetensors", arch)
    train = load_dataset(d / "train.parquet", schema, "train")
    audit = load_dataset(d / "audit.parquet", schema, "audit")
    soft, hard = _eps(arch, state, train, audit)
    return Setting(arch, state, train, load_dataset(d / "eval.parquet", schema, "eval"), soft, hard)


def _network(arch: ArchSpec, state: State, frozen: bool = False) -> nn.Sequential:
    network = build_model(arch)
    network.load_state_dict(state)
    for parameter in network.parameters():
        parameter.requires_grad_(not frozen)
    return network


def _task(setting: Setting, eps: np.ndarray, seed: int = 0, rows: np.ndarray | None = None,
          **config: Any) -> NetworkTask:
    keep = np.arange(setting.train.n) if rows is None else rows
    return NetworkTask(
        arch=setting.arch,
        network=_network(setting.arch, setting.state),
        original=_network(setting.arch, setting.state, frozen=True).eval(),
        features=setting.features[keep],
        labels=setting.labels[keep],
        eps=torch.from_numpy(eps[keep]),
        config=MethodConfig(**config),
        seed=seed,
    )


def _logits(setting: Setting, state: State, features: np.ndarray) -> torch.Tensor:
    inputs = torch.tensor(features, dtype=torch.float32)
    with torch.no_grad():
        logits: torch.Tensor = _network(setting.arch, state, frozen=True)(inputs)
    return logits.reshape(-1)


def _eval_dp(setting: Setting, state: State) -> float:
    """|P(ŷ=1 | Female) − P(ŷ=1 | Male)| of the hard labels on eval.parquet."""
    positive = (_logits(setting, state, setting.eval.features) > 0).numpy()
    female = setting.eval.sensitive["sex"] == "Female"
    return abs(float(positive[female].mean()) - float(positive[~female].mean()))


def _assert_same_layout(state: State, reference: State) -> None:
    assert state.keys() == reference.keys()
    for key, value in state.items():
        assert value.shape == reference[key].shape and value.dtype == reference[key].dtype
        assert value.device.type == "cpu" and bool(torch.isfinite(value).all())


@pytest.mark.parametrize("name", sorted(NETWORK_METHODS))
def test_soft_weights_lower_eval_demographic_parity_deterministically(setting: Setting, name: str) -> None:
    first = apply_network_method(_task(setting, setting.soft, name=name)).state
    again = apply_network_method(_task(setting, setting.soft, name=name)).state

    _assert_same_layout(first, setting.state)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert _eval_dp(setting, first) < _eval_dp(setting, setting.state)


@pytest.mark.parametrize(("name", "layers"), [("retrain_last_k", 1), ("retrain_last_k", 2), ("finetune", 0)])
def test_hard_weights_equal_training_on_the_retain_set(setting: Setting, name: str, layers: int) -> None:
    retain = np.flatnonzero(setting.hard == 0)
    options: dict[str, Any] = {"name": name, "layers": layers, "epochs": 2}
    weighted = apply_network_method(_task(setting, setting.hard, seed=3, **options)).state
    dropped = apply_network_method(_task(setting, np.zeros_like(setting.hard), seed=3, rows=retain,
                                         **options)).state

    assert (setting.hard == -1).sum() > 0
    assert all(torch.equal(weighted[key], dropped[key]) for key in weighted)


def _mean_loss_change(setting: Setting, state: State, mask: np.ndarray) -> float:
    labels = setting.labels[torch.from_numpy(mask)]
    before = per_sample_bce(_logits(setting, setting.state, setting.train.features[mask]), labels)
    after = per_sample_bce(_logits(setting, state, setting.train.features[mask]), labels)
    return float((after - before).mean())


@pytest.mark.parametrize("options", [{"name": "gradient_ascent", "alpha": 0.0}, {"name": "fisher"},
                                     {"name": "scrub"}], ids=["neggrad", "fisher", "scrub"])
def test_hard_weights_raise_the_forget_loss_more_than_the_retain_loss(setting: Setting,
                                                                      options: dict[str, Any]) -> None:
    state = apply_network_method(_task(setting, setting.hard, **options)).state
    forget = setting.hard == -1

    assert _mean_loss_change(setting, state, forget) > max(0.0, _mean_loss_change(setting, state, ~forget))


def test_hard_bad_teacher_moves_forget_outputs_towards_the_incompetent_teacher(setting: Setting) -> None:
    state = apply_network_method(_task(setting, setting.hard, name="bad_teacher")).state
    forget = setting.hard == -1
    original = _logits(setting, setting.state, setting.train.features)
    after = _logits(setting, state, setting.train.features)
    divergence = bernoulli_kl(original, after, 1.0)

    assert float(divergence[forget].mean()) > 3 * float(divergence[~forget].mean())


@pytest.mark.parametrize("name", ["retrain_last_k", "finetune", "fisher"])
def test_too_many_layers_are_refused(setting: Setting, name: str) -> None:
    with pytest.raises(ValueError, match=r"method\.layers must be between .* 3"):
        apply_network_method(_task(setting, setting.soft, name=name, layers=4))


def test_retrain_needs_at_least_one_layer(setting: Setting) -> None:
    with pytest.raises(ValueError, match=r"method\.layers must be between 1 and 3"):
        apply_network_method(_task(setting, setting.soft, name="retrain_last_k", layers=0))


def test_diverging_gradient_ascent_is_refused(setting: Setting) -> None:
    task = _task(setting, setting.hard, name="gradient_ascent", alpha=0.0, learning_rate=1e6,
                 epochs=200, max_epochs=0)
    with pytest.raises(ValueError, match=r"method\.learning_rate") as caught:
        apply_network_method(task)
    assert "stage 'unlearn'" in str(caught.value)


def test_non_finite_fisher_noise_is_refused(setting: Setting) -> None:
    with pytest.raises(NonFiniteError, match="unlearn"):
        apply_network_method(_task(setting, setting.soft, name="fisher", fisher_alpha=1e300))


def test_non_finite_training_data_is_refused(setting: Setting) -> None:
    task = _task(setting, setting.soft, name="finetune", epochs=1, max_epochs=0)
    task.features[5, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="unlearn"):
        apply_network_method(task)


def test_every_weight_zero_is_refused(setting: Setting) -> None:
    with pytest.raises(ValueError, match="weight 0"):
        apply_network_method(_task(setting, -np.ones(setting.train.n), name="finetune"))


def test_head_methods_are_not_network_methods(setting: Setting) -> None:
    with pytest.raises(ValueError, match="'newton' is not a network method"):
        apply_network_method(_task(setting, setting.soft, name="newton"))
