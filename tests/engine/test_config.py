"""Job spec validation."""

from __future__ import annotations

import pytest

from workers.engine.config import CorrectionSpec, check_compatibility, spec_from_dict


def test_defaults_resolve() -> None:
    spec = spec_from_dict({"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex"}})
    assert spec.weighting.scheme == "soft-2.3" and spec.method.name == "newton"
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(("data", "message"), [
    ({"objective": {"metric": "accuracy", "sensitive_attribute": "s"}}, "objective.metric must be one of"),
    ({"objective": {"metric": "demographic_parity", "sensitive_attribute": ""}}, "must name a column"),
    ({"objective": {"metric": "robustness", "reduction": 0}}, r"reduction must be in \(0, 1\]"),
    ({"objective": {"metric": "robustness", "colour": 1}}, "unknown field"),
    ({"objective": {"metric": "robustness"}, "weighting": {"lower": -2}}, "weighting.lower"),
    ({"objective": {"metric": "robustness"}, "method": {"learning_rate": -0.1}}, "learning_rate must be > 0"),
])
def test_bad_specs_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_from_dict(data)


def test_layers_beyond_the_model_are_refused() -> None:
    spec = spec_from_dict({"objective": {"metric": "robustness"},
                           "method": {"name": "retrain_last_k", "layers": 4}})
    with pytest.raises(ValueError, match=r"method\.layers must be between 1 and 3"):
        check_compatibility(spec, 3)
    check_compatibility(CorrectionSpec(), 3)


def test_max_epochs_binds_scrub_only() -> None:
    assert spec_from_dict({"method": {"name": "gradient_ascent", "epochs": 1}}).method.epochs == 1
    with pytest.raises(ValueError, match=r"method.max_epochs \(2.*at most method.epochs \(1\)"):
        spec_from_dict({"method": {"name": "scrub", "epochs": 1}})
