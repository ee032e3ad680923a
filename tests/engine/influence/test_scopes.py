"""The head scope's polish policy: polish only when it leaves the user's model as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.small_data import SmallExample, write_small_example
from workers.cli.main import main
from workers.engine.config import InfluenceConfig


@pytest.fixture(scope="module")
def regularized(tmp_path_factory: pytest.TempPathFactory) -> SmallExample:
    """A small model trained with weight decay: its head is far from the λ = 1 optimum on 600
    rows, so polishing would change it (as on German credit)."""
    return write_small_example(tmp_path_factory.mktemp("wd"), weight_decay=0.05, epochs=20)


def _report(example: SmallExample, out: Path, *extra: str) -> dict[str, object]:
    assert main(example.args(out, "--objective", "demographic_parity", "--no-robust-eval", *extra)) in (0, 3)
    report: dict[str, object] = json.loads((out / "report.json").read_text())
    return report


def _spec(tmp_path: Path, polish: str) -> str:
    path = tmp_path / f"spec-{polish}.json"
    path.write_text(json.dumps({"influence": {"polish": polish}}), encoding="utf-8")
    return str(path)


def test_a_polish_that_would_change_the_model_is_not_applied(regularized: SmallExample,
                                                             tmp_path: Path) -> None:
    report = _report(regularized, tmp_path / "auto")
    polish = report["influence"]["polish"]  # type: ignore[index]
    limits = InfluenceConfig()
    audit = polish["audit"]
    moved = (abs(audit["log_loss_after"] - audit["log_loss_before"]) > limits.polish_max_log_loss_change
             or abs(audit["accuracy_after"] - audit["accuracy_before"]) > limits.polish_max_accuracy_change)
    assert moved, audit  # the case really is one where polishing changes the model
    assert polish["policy"] == "auto" and polish["applied"] is False and polish["mode"] == "tilted"
    assert polish["exceeded"] and "eval" in polish
    assert "polish_not_applied" in {w["code"] for w in report["warnings"]}  # type: ignore[attr-defined]
    # influence was taken about the user's head: the target before is the user's model's
    assert report["target"]["audit_before"] == pytest.approx(audit["target_before"])  # type: ignore[index]


def test_polish_always_applies_and_reports_its_cost(regularized: SmallExample, tmp_path: Path) -> None:
    report = _report(regularized, tmp_path / "always", "--spec", _spec(tmp_path, "always"))
    polish = report["influence"]["polish"]  # type: ignore[index]
    assert polish["applied"] is True and polish["mode"] == "polished" and polish["newton_steps"] >= 1
    assert polish["audit"]["log_loss_after"] != pytest.approx(polish["audit"]["log_loss_before"], abs=1e-6)
    # `before` is still the user's unmodified model, whatever the polish did
    auto = _report(regularized, tmp_path / "auto2")
    assert report["before"] == auto["before"]


def test_polish_never_tilts_even_when_polishing_is_harmless(tmp_path: Path) -> None:
    example = write_small_example(tmp_path / "plain", epochs=60, small_group_rows=10)
    auto = _report(example, tmp_path / "auto")["influence"]["polish"]  # type: ignore[index]
    assert auto["applied"] is True and auto["mode"] == "polished" and not auto["exceeded"]
    never = _report(example, tmp_path / "never", "--spec", _spec(tmp_path, "never"))
    assert never["influence"]["polish"]["mode"] == "tilted"  # type: ignore[index]
    assert never["influence"]["polish"]["applied"] is False  # type: ignore[index]
