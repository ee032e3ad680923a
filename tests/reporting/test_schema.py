"""``report.schema.json``: a valid draft 2020-12 schema that real CLI reports match, and that
names the path of what is missing or mistyped."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import example_args
from workers.cli.main import main
from workers.engine.evaluation.report import REPORT_VERSION
from workers.engine.examples.common import ExampleInfo
from workers.reporting.schema import report_schema, validate_report

ENGINE_KEYS = ("provenance", "frontier", "frontier_info")
"""Keys issue 9 added to the report, required by the schema."""
HEX = "ab" * 32


@pytest.fixture(scope="module")
def cli_report(adult_example: ExampleInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real ``softunlearn correct`` report (with a gate) on the Adult example."""
    out = tmp_path_factory.mktemp("schema-report")
    code = main(example_args(adult_example, out, "--objective", "demographic_parity", "--scheme", "qp",
                             "--gate", "eval.demographic_parity_difference<=0.2"))
    assert code in (0, 3)
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _errors(report: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as info:
        validate_report(report)
    return str(info.value)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = report_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://softunlearn.dev/schemas/report-v{REPORT_VERSION}.json"
    assert schema["properties"]["report_version"]["const"] == REPORT_VERSION
    for key in ("before", "after", "predicted", "weights", "timings", "device", "spec", "target_met",
                "warnings", *ENGINE_KEYS):
        assert key in schema["required"], key


@pytest.mark.slow
def test_real_cli_report_matches_the_schema(cli_report: dict[str, Any]) -> None:
    assert cli_report["report_version"] == REPORT_VERSION
    assert cli_report["gates"][0]["passed"] in (True, False)
    assert len(cli_report["frontier"]) == 14
    validate_report(cli_report)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "expected"), [
    (("before", "eval", "accuracy"), "$.before.eval: 'accuracy' is a required property"),
    (("after", "audit", "groups"), "$.after.audit: 'groups' is a required property"),
    (("after", "eval"), "$.after: 'eval' is a required property"),
    (("weights", "l2_norm"), "$.weights: 'l2_norm' is a required property"),
    (("weights", "at_lower_bound"), "$.weights: 'at_lower_bound' is a required property"),
    (("before", "audit", "robust_accuracy"), "$.before.audit: 'robust_accuracy' is a required property"),
    (("timings", "total"), "$.timings: 'total' is a required property"),
    (("predicted",), "$: 'predicted' is a required property"),
    (("device",), "$: 'device' is a required property"),
    (("target_met",), "$: 'target_met' is a required property"),
    (("provenance", "model_sha256"), "$.provenance: 'model_sha256' is a required property"),
])
def test_a_missing_fixed_key_fails_naming_its_path(cli_report: dict[str, Any], path: tuple[str, ...],
                                                   expected: str) -> None:
    report = copy.deepcopy(cli_report)
    parent = report
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    assert expected in _errors(report)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "value", "expected"), [
    (("before", "eval", "accuracy"), "0.85", "$.before.eval.accuracy: '0.85' is not of type 'number'"),
    (("before", "eval", "accuracy"), None, "$.before.eval.accuracy: None is not of type 'number'"),
    (("after", "audit", "log_loss"), True, "$.after.audit.log_loss: True is not of type 'number'"),
    (("weights", "down_weighted"), 1.5, "$.weights.down_weighted: 1.5 is not of type 'integer'"),
    (("target_met",), "yes", "$.target_met: 'yes' is not of type 'boolean'"),
    (("report_version",), 2, "$.report_version: 3 was expected"),
    (("warnings",), [{"code": "x"}], "$.warnings[0]: 'message' is a required property"),
    (("gates",), [{"gate": "g"}], "$.gates[0]: 'split' is a required property"),
    (("provenance", "model_sha256"), "abc", "$.provenance.model_sha256: 'abc' does not match"),
    (("provenance", "created_at"), "2025-01-02T03:04:05+02:00", "$.provenance.created_at"),
    (("provenance", "datasets"), {"train": HEX, "audit": HEX, "test": HEX}, "$.provenance.datasets"),
    (("frontier_info", "skipped"), 1, "$.frontier_info.skipped: 1 is not of type 'string', 'null'"),
])
def test_a_wrong_type_fails_naming_its_path(cli_report: dict[str, Any], path: tuple[str, ...], value: Any,
                                            expected: str) -> None:
    report = copy.deepcopy(cli_report)
    parent = report
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert expected in _errors(report)


@pytest.mark.slow
def test_a_frontier_point_has_exactly_one_of_reduction_and_k_fraction(cli_report: dict[str, Any]) -> None:
    report = copy.deepcopy(cli_report)
    report["frontier"][0]["k_fraction"] = 0.1
    assert "$.frontier[0]" in _errors(report)
    del report["frontier"][0]["k_fraction"], report["frontier"][0]["reduction"]
    assert "$.frontier[0]" in _errors(report)
    report = copy.deepcopy(cli_report)
    report["frontier"][0]["audit"]["accuracy"] = "high"
    assert "$.frontier[0].audit.accuracy" in _errors(report)


@pytest.mark.slow
def test_unknown_keys_are_allowed_and_many_errors_are_summarised(cli_report: dict[str, Any]) -> None:
    report = copy.deepcopy(cli_report)
    report["a_later_key"] = {"anything": [1, 2]}
    report["after"]["eval"]["a_later_metric"] = 0.5
    validate_report(report)
    for key in ("before", "after", "predicted", "weights", "timings", "device", "spec"):
        del report[key]
    message = _errors(report)
    assert "7 error(s)" in message and "(and 2 more)" in message
