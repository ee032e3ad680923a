"""The fairness gap surrogates: the value from the split's logits is the value from θ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.objectives.surrogates import GroupGap


@pytest.mark.parametrize("metric", ["demographic_parity", "equal_opportunity", "equalized_odds"])
@pytest.mark.parametrize("privileged", [None, "b"])
def test_the_gap_from_the_logits_is_the_gap_from_theta(metric: str, privileged: str | None) -> None:
    rng = np.random.default_rng(3)
    design = torch.from_numpy(np.column_stack([rng.standard_normal((500, 4)), np.ones(500)]))
    labels = (rng.random(500) < 0.4).astype(np.float64)
    groups = rng.choice(np.array(["a", "b", "c"], dtype=object), size=500)
    gap = GroupGap.build(metric, design, labels, groups, privileged, "audit")
    for _ in range(3):
        theta = torch.from_numpy(rng.standard_normal(5))
        assert gap.value_at(design @ theta) == pytest.approx(gap.value(theta), abs=1e-15)
        assert gap.value_at(design @ theta) == pytest.approx(gap.evaluate(theta)[0], abs=1e-15)
