"""``--gate`` and the exit codes of ``softunlearn correct``: parsing and evaluation on a handmade
report, then a few CLI runs on the real Adult example."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import example_args
from workers.cli import gates
from workers.cli.gates import Gate, apply_gates, evaluate_gate, format_gates, parse_gate
from workers.cli.main import main
from workers.engine.errors import InputError
from workers.engine.examples.common import ExampleInfo
from workers.engine.models.head_model import pick_device


def _split(accuracy: float, dp: float) -> dict[str, Any]:
    return {"n": 100, "accuracy": accuracy, "log_loss": 0.4, "demographic_parity_difference": dp,
            "equal_opportunity_difference": 0.1, "equalized_odds_difference": None, "groups": {}}


def _report() -> dict[str, Any]:
    change = {"estimate": -0.15, "low": -0.2, "high": -0.1, "within_noise": False}
    return {
        "target_met": True,
        "warnings": [{"code": "accuracy_drop", "message": "..."}],
        "before": {"audit": _split(0.85, 0.21), "eval": {**_split(0.86, 0.20), "robust_accuracy": 0.5}},
        "after": {"audit": _split(0.84, 0.06), "eval": {**_split(0.84, 0.05), "robust_accuracy": 0.55}},
        "confidence": {"eval": {"demographic_parity_difference": {"change": change}}},
    }


# --- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "split", "metric", "base", "kind", "op", "threshold"), [
    ("eval.demographic_parity_difference<=0.05", "eval", "demographic_parity_difference",
     "demographic_parity_difference", "after", "<=", 0.05),
    ("eval.accuracy_change>=-0.01", "eval", "accuracy_change", "accuracy", "change", ">=", -0.01),
    (" audit.log_loss_before < 1e-1 ", "audit", "log_loss_before", "log_loss", "before", "<", 0.1),
    ("eval.robust_accuracy_frozen>0.4", "eval", "robust_accuracy_frozen", "robust_accuracy_frozen",
     "after", ">", 0.4),
    ("eval.robust_accuracy_change_low>0", "eval", "robust_accuracy_change_low", "robust_accuracy",
     "change_low", ">", 0.0),
    ("eval.demographic_parity_difference_change_high<=0", "eval",
     "demographic_parity_difference_change_high", "demographic_parity_difference", "change_high", "<=", 0.0),
])
def test_parse_gate_reads_split_metric_operator_and_value(text: str, split: str, metric: str, base: str,
                                                          kind: str, op: str, threshold: float) -> None:
    gate = parse_gate(text)
    assert (gate.split, gate.metric, gate.base, gate.kind, gate.op) == (split, metric, base, kind, op)
    assert gate.threshold == pytest.approx(threshold)
    assert " " not in gate.text


@pytest.mark.parametrize(("text", "expected"), [
    ("eval.accuracy=0.8", "malformed gate"),
    ("eval.accuracy<=", "malformed gate"),
    ("accuracy<=0.8", "malformed gate"),
    ("eval.accuracy<=0.8 extra", "malformed gate"),
    ("eval.accuracy=>0.8", "malformed gate"),
    ("eval.accuracy<<0.8", "malformed gate"),
    ("train.accuracy<=0.8", "unknown split 'train'"),
    ("eval.precision>=0.8", "unknown metric 'precision'"),
    ("eval.accuracy_after>=0.8", "unknown metric 'accuracy_after'"),
    ("eval.accuracy<=abc", "is not a number"),
    ("eval.accuracy<=nan", "finite"),
    ("eval.accuracy<=-inf", "finite"),
])
def test_parse_gate_refuses_malformed_gates_naming_the_valid_forms(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as info:
        parse_gate(text)
    if expected in ("malformed gate", "is not a number") or expected.startswith("unknown metric"):
        assert "demographic_parity_difference" in str(info.value) and "<=" in str(info.value)


def test_every_operator_is_accepted() -> None:
    assert {parse_gate(f"eval.accuracy{op}0.5").op for op in gates.OPERATORS} == {"<=", ">=", "<", ">"}


# --- evaluation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value", "passed"), [
    ("eval.demographic_parity_difference<=0.05", 0.05, True),
    ("eval.demographic_parity_difference<0.05", 0.05, False),
    ("eval.demographic_parity_difference_before>0.15", 0.20, True),
    ("eval.accuracy_change>=-0.01", -0.02, False),
    ("eval.accuracy_change>=-0.03", -0.02, True),
    ("audit.demographic_parity_difference_change<=-0.1", -0.15, True),
    ("eval.robust_accuracy>0.5", 0.55, True),
    ("eval.demographic_parity_difference_change_high<0", -0.1, True),
    ("eval.demographic_parity_difference_change_low>=0", -0.2, False),
])
def test_evaluate_gate_reads_after_before_change_and_interval(text: str, value: float, passed: bool) -> None:
    row = evaluate_gate(parse_gate(text), _report())
    assert row["value"] == pytest.approx(value)
    assert row["passed"] is passed
    assert row["gate"] == text and row["split"] == text.split(".")[0]
    assert ("passes" if passed else "fails") in row["message"]


@pytest.mark.parametrize(("text", "expected"), [
    ("audit.robust_accuracy>=0.5", "no after robust_accuracy on audit"),
    ("audit.robust_accuracy_change>=0", "no after robust_accuracy on audit"),
    ("eval.equalized_odds_difference<=0.1", "not a number"),
    ("audit.accuracy_change_low>=0", "no bootstrap interval"),
])
def test_a_number_the_report_lacks_fails_the_gate(text: str, expected: str) -> None:
    row = evaluate_gate(parse_gate(text), _report())
    assert row["passed"] is False and row["value"] is None
    assert expected in row["message"]


def test_a_missing_split_fails_the_gate() -> None:
    report = _report()
    del report["before"]["eval"], report["after"]["eval"], report["confidence"]["eval"]
    for text in ("eval.accuracy>=0.5", "eval.accuracy_change>=0", "eval.accuracy_change_low>=0"):
        row = evaluate_gate(parse_gate(text), report)
        assert row["passed"] is False
        assert "eval" in row["message"]


def test_apply_gates_records_results_and_warns_per_failure() -> None:
    report = _report()
    ok = apply_gates(report, [parse_gate("eval.demographic_parity_difference<=0.05"),
                              parse_gate("eval.accuracy_change>=0.5")])
    assert ok is False
    assert [row["passed"] for row in report["gates"]] == [True, False]
    assert set(report["gates"][0]) == {"gate", "split", "metric", "op", "threshold", "value", "passed",
                                       "message"}
    failed = [w for w in report["warnings"] if w["code"] == "gate_failed"]
    assert len(failed) == 1 and "eval.accuracy_change>=0.5" in failed[0]["message"]
    assert len(report["warnings"]) == 2
    lines = format_gates(report["gates"]).splitlines()
    assert lines[0].startswith("gate PASS: eval.demographic_parity_difference<=0.05")
    assert lines[1].startswith("gate FAIL: eval.accuracy_change>=0.5")
    json.dumps(report, allow_nan=False)


def test_no_gates_records_an_empty_list_and_passes() -> None:
    report = _report()
    assert apply_gates(report, []) is True
    assert report["gates"] == [] and len(report["warnings"]) == 1
    assert format_gates([]) == ""


def test_gates_module_imports_no_torch() -> None:
    import subprocess

    code = "import sys, workers.cli.gates; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "mps", "meta"])
def test_pick_device_refuses_unknown_devices(device: str) -> None:
    with pytest.raises(InputError, match="unknown device"):
        pick_device(device)


def test_pick_device_refuses_cuda_without_cuda() -> None:
    if torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA device"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
        assert pick_device("cuda").type == "cuda"
    else:
        for device in ("cuda", "cuda:1"):
            with pytest.raises(InputError, match="CUDA is not available"):
                pick_device(device)
    assert pick_device("cpu") == torch.device("cpu")


# --- the CLI on the real Adult example -------------------------------------------------------

FAST = ("--objective", "demographic_parity", "--no-robust-eval")


def _report_of(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


@pytest.mark.slow
def test_met_target_and_passing_gate_exit_0(adult_example: ExampleInfo, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    args = example_args(adult_example, tmp_path, *FAST, "--gate", "eval.demographic_parity_difference<=0.1",
                        "--gate", "eval.accuracy_change>=-0.03")
    assert main(args) == 0
    report = _report_of(tmp_path)
    assert report["target_met"] is True
    assert [row["passed"] for row in report["gates"]] == [True, True]
    assert not [w for w in report["warnings"] if w["code"] == "gate_failed"]
    out = capsys.readouterr().out
    assert "gate PASS: eval.demographic_parity_difference<=0.1" in out
    assert "gate PASS: eval.accuracy_change>=-0.03" in out


@pytest.mark.slow
def test_met_target_with_a_failing_gate_exits_3(adult_example: ExampleInfo, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = example_args(adult_example, tmp_path, *FAST, "--gate", "eval.accuracy_change>=0.5",
                        "--gate", "eval.robust_accuracy>=0.4")
    assert main(args) == 3
    report = _report_of(tmp_path)
    assert report["target_met"] is True
    assert [row["passed"] for row in report["gates"]] == [False, False]
    assert report["gates"][0]["value"] == pytest.approx(
        report["after"]["eval"]["accuracy"] - report["before"]["eval"]["accuracy"])
    assert report["gates"][1]["value"] is None and "robust" in report["gates"][1]["message"]
    assert len([w for w in report["warnings"] if w["code"] == "gate_failed"]) == 2
    out = capsys.readouterr().out
    assert "gate FAIL: eval.accuracy_change>=0.5" in out and "gate FAIL: eval.robust_accuracy>=0.4" in out


@pytest.mark.slow
def test_missed_target_exits_3_and_writes_the_outputs(adult_example: ExampleInfo, tmp_path: Path) -> None:
    args = example_args(adult_example, tmp_path, *FAST, "--scheme", "qp", "--reduction", "0.99",
                        "--utility-tolerance", "0", "--max-iterations", "1")
    assert main(args) == 3
    report = _report_of(tmp_path)
    assert report["target_met"] is False
    assert "target_not_met" in {w["code"] for w in report["warnings"]}
    assert report["gates"] == []
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("gate", ["eval.accuracy=0.8", "train.accuracy<=1", "eval.precision<=1",
                                  "eval.accuracy<=inf"])
def test_bad_gate_exits_2_before_any_work(adult_example: ExampleInfo, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], gate: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(example_args(adult_example, out, *FAST, "--gate", gate))
    assert info.value.code == 2
    assert "--gate" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu"])
def test_unavailable_or_unknown_device_exits_2(adult_example: ExampleInfo, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    out = tmp_path / "out"
    assert main(example_args(adult_example, out, *FAST, "--device", device)) == 2
    err = capsys.readouterr().err
    expected = "unknown device" if device == "tpu" else "CUDA is not available on this machine"
    assert f"--device {device}: {expected}" in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["0", "1"])
def test_internal_error_exits_1_with_a_short_message(adult_example: ExampleInfo, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, debug: str) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("workers.engine.pipeline.run_correction", broken)
    monkeypatch.setenv("SOFTUNLEARN_DEBUG", debug)
    out = tmp_path / "out"
    assert main(example_args(adult_example, out, *FAST)) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom (please report this)" in err
    assert ("Traceback" in err) is (debug == "1")
    assert not out.exists()


def test_gate_type_is_the_parsed_gate() -> None:
    from workers.cli.main import build_parser

    args = build_parser().parse_args(["correct", "--model", "m", "--arch", "a", "--train", "t",
                                      "--audit", "v", "--out", "o", "--gate", "eval.accuracy>=0.8",
                                      "--gate", "audit.log_loss<1"])
    assert [g.text for g in args.gate] == ["eval.accuracy>=0.8", "audit.log_loss<1"]
    assert all(isinstance(g, Gate) for g in args.gate)
    assert build_parser().parse_args(["correct", "--model", "m", "--arch", "a", "--train", "t",
                                      "--audit", "v", "--out", "o"]).gate == []
