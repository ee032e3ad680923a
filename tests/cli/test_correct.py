"""``softunlearn correct`` end to end on the real Adult example, checked independently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import example_args, run_correct
from workers.cli.main import main
from workers.engine.examples.common import ExampleInfo

pytestmark = pytest.mark.slow


def _plain_sequential(arch: dict[str, object]) -> torch.nn.Sequential:
    widths = [int(arch["in_features"]), *map(int, arch["hidden"]), 1]  # type: ignore[call-overload]
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _independent_metrics(model_path: Path, example: ExampleInfo) -> dict[str, float]:
    """Accuracy and hard-label DP difference on eval, recomputed without the engine."""
    arch = json.loads((example.out_dir / "arch.json").read_text())
    model = _plain_sequential(arch)
    model.load_state_dict(load_file(str(model_path)), strict=True)
    frame = pd.read_parquet(example.out_dir / "eval.parquet")
    features = np.array(frame.drop(columns=["income", "sex", "reference_logits"]).to_numpy(np.float32),
                        copy=True)
    with torch.no_grad():
        predicted = (model(torch.from_numpy(features)).reshape(-1) > 0).numpy()
    rates = [predicted[frame["sex"].to_numpy() == g].mean() for g in ("Female", "Male")]
    return {"accuracy": float((predicted == frame["income"].to_numpy()).mean()),
            "dp": float(abs(rates[0] - rates[1]))}


@pytest.fixture(scope="module")
def default_run(adult_example: ExampleInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp-default")
    assert main(example_args(adult_example, out, "--objective", "demographic_parity")) == 0
    return out


def test_default_soft_correction_halves_eval_dp_and_keeps_accuracy(
        default_run: Path, adult_example: ExampleInfo) -> None:
    before = _independent_metrics(adult_example.out_dir / "model.safetensors", adult_example)
    after = _independent_metrics(default_run / "model.safetensors", adult_example)
    assert after["dp"] <= 0.5 * before["dp"], (before, after)
    assert after["accuracy"] >= before["accuracy"] - 0.015, (before, after)


def test_corrected_checkpoint_keeps_keys_shapes_dtypes(default_run: Path,
                                                       adult_example: ExampleInfo) -> None:
    original = load_file(str(adult_example.out_dir / "model.safetensors"))
    corrected = load_file(str(default_run / "model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in original.items()} == {
        k: (v.shape, v.dtype) for k, v in corrected.items()}
    changed = [k for k in original if not torch.equal(original[k], corrected[k])]
    assert sorted(changed) == ["4.bias", "4.weight"]


def test_report_has_the_fixed_keys_and_matches_independent_numbers(
        default_run: Path, adult_example: ExampleInfo) -> None:
    report = json.loads((default_run / "report.json").read_text())
    for stage in ("before", "after"):
        for split in ("audit", "eval"):
            row = report[stage][split]
            for key in ("accuracy", "log_loss", "demographic_parity_difference",
                        "equal_opportunity_difference", "equalized_odds_difference", "groups",
                        "robust_accuracy"):
                assert key in row, (stage, split, key)
            assert set(row["groups"]) == {"Female", "Male"}
    for key in ("predicted", "weights", "timings", "device", "spec"):
        assert key in report
    after = _independent_metrics(default_run / "model.safetensors", adult_example)
    assert report["after"]["eval"]["demographic_parity_difference"] == pytest.approx(after["dp"])
    assert report["after"]["eval"]["accuracy"] == pytest.approx(after["accuracy"])
    assert report["spec"]["weighting"]["scheme"] == "soft-2.3"
    assert "<table>" in (default_run / "report.html").read_text()


def test_hard_scheme_runs_on_the_same_example(adult_example: ExampleInfo, tmp_path: Path) -> None:
    args = example_args(adult_example, tmp_path, "--objective", "demographic_parity",
                        "--scheme", "hard", "--k-fraction", "0.1")
    report = run_correct(args, tmp_path)
    assert report["weights"]["removed"] > 0
    assert (report["after"]["eval"]["demographic_parity_difference"]
            < report["before"]["eval"]["demographic_parity_difference"])


def test_negative_initial_gap_shrinks_instead_of_doubling(adult_example: ExampleInfo,
                                                          tmp_path: Path) -> None:
    args = example_args(adult_example, tmp_path, "--objective", "demographic_parity",
                        "--privileged-group", "Female")
    assert main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    before = report["before"]["audit"]["surrogates"]["demographic_parity"]
    after = report["after"]["audit"]["surrogates"]["demographic_parity"]
    assert before < 0
    assert abs(after) < 0.6 * abs(before)
    target = report["target"]
    assert target["audit_before"] < 0 and target["audit_goal"] < 0 and target["audit_after"] < 0
    assert target["audit_goal"] == pytest.approx(0.4 * target["audit_before"])
    assert (report["after"]["eval"]["demographic_parity_difference"]
            < report["before"]["eval"]["demographic_parity_difference"])


@pytest.mark.parametrize("objective", ["equal_opportunity", "equalized_odds", "robustness"])
def test_other_objectives_improve_their_audit_target(adult_example: ExampleInfo, tmp_path: Path,
                                                     objective: str) -> None:
    target = run_correct(example_args(adult_example, tmp_path, "--objective", objective), tmp_path)["target"]
    assert abs(target["audit_after"]) < abs(target["audit_before"])


@pytest.mark.parametrize("extra", [["--method", "refit"], ["--scheme", "qp", "--method", "refit"],
                                   ["--scheme", "soft-2.1"], ["--hessian", "reweighted"]])
def test_scheme_and_method_variants_reduce_eval_dp(adult_example: ExampleInfo, tmp_path: Path,
                                                   extra: list[str]) -> None:
    report = run_correct(example_args(adult_example, tmp_path, "--objective", "demographic_parity", *extra),
                         tmp_path)
    assert (report["after"]["eval"]["demographic_parity_difference"]
            < 0.7 * report["before"]["eval"]["demographic_parity_difference"])


@pytest.mark.parametrize("method", ["retrain_last_k", "finetune", "gradient_ascent", "scrub", "fisher",
                                    "bad_teacher"])
def test_network_methods_through_the_cli(adult_example: ExampleInfo, tmp_path: Path, method: str) -> None:
    run_correct(example_args(adult_example, tmp_path, "--objective", "demographic_parity",
                             "--method", method, "--no-robust-eval"), tmp_path)
    before = _independent_metrics(adult_example.out_dir / "model.safetensors", adult_example)
    after = _independent_metrics(tmp_path / "model.safetensors", adult_example)
    assert after["dp"] < 0.9 * before["dp"], (method, before, after)
    assert after["accuracy"] >= before["accuracy"] - 0.03, (method, before, after)


def test_full_scope_influence_corrects_the_whole_network(adult_example: ExampleInfo, tmp_path: Path) -> None:
    # The full-scope frontier (CG solves) is exercised by the robustness test below.
    assert main(example_args(adult_example, tmp_path, "--objective", "demographic_parity",
                             "--scope", "full", "--no-robust-eval", "--no-frontier")) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["predicted"]["iterations"][0]["solver"]["solver"] == "cg"
    assert report["frontier"] == [] and report["frontier_info"]["skipped"]
    original = load_file(str(adult_example.out_dir / "model.safetensors"))
    corrected = load_file(str(tmp_path / "model.safetensors"))
    assert not torch.equal(original["0.weight"], corrected["0.weight"])
    before = _independent_metrics(adult_example.out_dir / "model.safetensors", adult_example)
    after = _independent_metrics(tmp_path / "model.safetensors", adult_example)
    assert after["dp"] <= 0.5 * before["dp"] and after["accuracy"] >= before["accuracy"] - 0.015


def test_full_scope_robustness_target_uses_an_input_space_attack(adult_example: ExampleInfo,
                                                                  tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"  # a short frontier grid: each point is a full-network attack
    spec.write_text(json.dumps({"evaluation": {"frontier": {"reductions": [0.1, 0.4, 0.7, 1.0],
                                                            "k_fractions": [0.05]}}}))
    code = main(example_args(adult_example, tmp_path, "--objective", "robustness", "--scope", "full",
                             "--attack", "fgsm", "--attack-epsilon", "0.05", "--reduction", "0.3",
                             "--max-iterations", "2", "--no-robust-eval", "--spec", str(spec)))
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == (0 if report["target_met"] else 3)
    assert report["spec"]["objective"]["attack"]["kind"] == "fgsm"
    assert abs(report["target"]["audit_after"]) < abs(report["target"]["audit_before"])
    # the target is adaptive: the attack is re-crafted against the corrected network
    assert report["after"]["audit"]["robust_accuracy"] > report["before"]["audit"]["robust_accuracy"]
    assert report["after"]["eval"]["robust_accuracy"] > report["before"]["eval"]["robust_accuracy"]
    # Full-scope frontier by CG: soft points share one solve; they move robust accuracy monotonically.
    soft = [p["eval"]["robust_accuracy"] for p in report["frontier"] if "reduction" in p]
    assert len(soft) == 4 and soft == sorted(soft) and soft[-1] > soft[0] + 0.1
    # The first step's delta is a multiple of the soft points': it reuses their solve, and says so
    # with the residual it checked.
    reused = [note for note in report["notes"] if "reusing the frontier's solves" in note]
    assert len(reused) == 1 and float(reused[0].split("relative residual ")[1].split(",")[0]) < 1e-3


def test_reflect_attack_is_refused_for_full_scope(adult_example: ExampleInfo, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(example_args(adult_example, tmp_path, "--objective", "robustness", "--scope", "full",
                             "--attack", "reflect_linear")) == 2
    assert "reflect_linear" in capsys.readouterr().err


def test_tracking_undoes_a_step_that_does_not_deliver(bank_example: ExampleInfo, tmp_path: Path) -> None:
    """Robustness on Bank: the first full Newton step overshoots (the adversarial log-loss rises);
    it is shortened, later steps that stop delivering are undone, and the model stays sound."""
    args = example_args(bank_example, tmp_path, "--objective", "robustness", "--reduction", "0.5",
                        "--no-robust-eval")
    assert main(args) == 3
    report = json.loads((tmp_path / "report.json").read_text())
    assert "did not shrink" in str(report["predicted"]["iterations"][0]["line_search"][0]["rejected"])
    assert report["predicted"]["iterations"][0]["step_scale"] < 1
    assert report["tracking"]["undone"] and "step_undone" in {w["code"] for w in report["warnings"]}
    assert report["after"]["eval"]["accuracy"] >= report["before"]["eval"]["accuracy"] - 0.01
    assert abs(report["target"]["audit_after"]) < abs(report["target"]["audit_before"])
    for split in ("audit", "eval"):  # adaptive robust accuracy, re-crafted on the corrected model
        assert report["after"][split]["robust_accuracy"] > report["before"][split]["robust_accuracy"] + 0.01


def test_qp_tracking_stops_at_the_feasibility_bound_instead_of_failing(bank_example: ExampleInfo,
                                                                       tmp_path: Path) -> None:
    """Bank, robustness, qp with τ = 0.01: the first step is feasible, a later one is not; the
    job keeps the best feasible steps and says so (it used to exit 2 with advice that failed)."""
    code = main(example_args(bank_example, tmp_path, "--objective", "robustness", "--scheme", "qp",
                             "--utility-tolerance", "0.01", "--no-robust-eval"))
    assert code in (0, 3)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["target"]["iterations"] >= 1
    assert "qp_bound_reached" in {w["code"] for w in report["warnings"]}
    assert abs(report["target"]["audit_after"]) < abs(report["target"]["audit_before"])
