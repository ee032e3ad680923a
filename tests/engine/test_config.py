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
    ({"objective": {"metric": "robustness"}, "influence": {"auto_cg_max_flops": 0}},
     r"influence\.auto_cg_max_flops must be > 0"),
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


def _scalar_paths(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every non-dataclass field of the spec tree with its type hint."""
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    found: list[tuple[tuple[str, ...], object]] = []
    for item in fields(cls):
        kind = get_type_hints(cls)[item.name]
        if isinstance(kind, type) and is_dataclass(kind):
            found += _scalar_paths(kind, (*prefix, item.name))
        else:
            found.append(((*prefix, item.name), kind))
    return found


def _nested(path: tuple[str, ...], value: object) -> dict[str, object]:
    tree: dict[str, object] = {path[-1]: value}
    for key in reversed(path[:-1]):
        tree = {key: tree}
    return tree


NUMBER_HINTS = (int, float, int | None, float | None)


@pytest.mark.parametrize("value", ["10", [1], {"a": 1}, None])
def test_wrong_json_types_name_the_field(value: object) -> None:
    """A string, list, object or null where a number goes is a ValueError naming the field, never
    the TypeError of comparing it with a number (which the API answered 500)."""
    checked = 0
    for path, kind in _scalar_paths(CorrectionSpec):
        if kind not in NUMBER_HINTS or (value is None and kind in (int | None, float | None)):
            continue
        checked += 1
        with pytest.raises(ValueError, match=rf"^{'.'.join(path)} must be a number; got "):
            spec_from_dict(_nested(path, value))
    assert checked > 40  # the walk reached the nested sections


@pytest.mark.parametrize("path", [("objective", "reduction"), ("method", "learning_rate"),
                                  ("evaluation", "frontier", "reductions")])
def test_ints_past_the_float_range_are_not_finite(path: tuple[str, ...]) -> None:
    huge = 10 ** 400
    with pytest.raises(ValueError, match="must be a finite number"):
        spec_from_dict(_nested(path, [huge] if path[-1] == "reductions" else huge))


def test_strings_fields_refuse_other_types() -> None:
    with pytest.raises(ValueError, match=r"^objective.sensitive_attribute must be a string; got \['sex'\]"):
        spec_from_dict({"objective": {"sensitive_attribute": ["sex"]}})
    assert spec_from_dict({"objective": {"privileged_group": None}}).objective.privileged_group is None
