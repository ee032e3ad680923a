"""The model as extractor plus head: kept split designs give the network's logits as Φθ."""

from __future__ import annotations

import numpy as np
import torch

from workers.engine.io.architecture import parse_arch
from workers.engine.models.head_model import HeadModel
from workers.engine.models.training import build_model


def _model() -> HeadModel:
    arch = parse_arch({"type": "mlp", "in_features": 6, "hidden": [8, 5]})
    torch.manual_seed(0)
    network = build_model(arch)
    return HeadModel.from_state(arch, arch.to_external(network.state_dict()), torch.device("cpu"))


def test_head_variants_share_the_kept_design_and_match_the_network() -> None:
    model = _model()
    features = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    kept = model.keep_design(features)
    assert model.keep_design(features) is kept
    variant = model.with_theta(model.theta() + 0.25)
    assert variant.design(features) is kept
    assert torch.allclose(variant.head_logits(features), variant.logits(features), atol=1e-5)
    assert torch.allclose(model.head_logits(features), model.logits(features), atol=1e-5)
    other = features.copy()
    assert variant.design(other) is not kept
    assert torch.allclose(variant.head_logits(other), variant.logits(other))


def test_a_logistic_regression_design_wraps_the_features_without_a_copy() -> None:
    arch = parse_arch({"type": "mlp", "in_features": 4, "hidden": []})
    state = {"0.weight": torch.ones(1, 4), "0.bias": torch.zeros(1)}
    model = HeadModel.from_state(arch, state, torch.device("cpu"))
    features = np.ones((10, 4), dtype=np.float32)
    design = model.head_design(features)
    assert design.features.data_ptr() == torch.from_numpy(features).data_ptr()
