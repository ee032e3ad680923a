"""The memory pre-flight: the estimate, the budget, and refusing a job before reading it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workers.engine.errors import InputError
from workers.engine.io.memory_plan import (
    BASE_BYTES,
    MemoryBudgetExceeded,
    SplitShape,
    check_memory,
    default_memory_budget,
    estimate_memory,
    parse_bytes,
)

REPO = Path(__file__).resolve().parents[3]


def test_a_million_rows_of_512_float32_features_fit_in_4_gb() -> None:
    splits = [SplitShape("train", 1_000_000, 512, 1), SplitShape("audit", 20_000, 512, 1),
              SplitShape("eval", 20_000, 512, 1)]
    estimate = estimate_memory(splits, 512, has_extractor=False, itemsize=4)
    assert 2.05e9 < estimate.parts["train"] < 2.3e9
    assert estimate.total < 4e9
    with_extractor = estimate_memory(splits, 512, has_extractor=True, itemsize=4)
    assert with_extractor.parts["train"] - estimate.parts["train"] == 1_000_000 * 512 * 4
    assert estimate_memory(splits, 512, False, 8).parts["train"] > estimate.parts["train"] + 2e9
    # read through the extractor (1 M × 512 → 512 → 1 head job): φ only, the inputs never held
    embedded = estimate_memory(splits, 512, has_extractor=True, itemsize=4, embedded_train=True)
    assert embedded.parts["train"] == estimate.parts["train"] and embedded.total < 4e9
    narrower = estimate_memory(splits, 128, has_extractor=True, itemsize=4, embedded_train=True)
    assert estimate.parts["train"] - narrower.parts["train"] == 1_000_000 * (512 - 128) * 4


def test_over_the_budget_the_message_has_the_numbers() -> None:
    estimate = estimate_memory([SplitShape("train", 10_000_000, 512, 1)], 512, False, 4)
    expected = r"needs about 2\d\.\d\d GB \(train .* budget is 8\.00 GB"
    with pytest.raises(MemoryBudgetExceeded, match=expected):
        check_memory(estimate, 8_000_000_000)
    check_memory(estimate, None)
    check_memory(estimate, estimate.total)


@pytest.mark.parametrize(("text", "value"), [("8GiB", 8 * 1024**3), ("4 GB", 4 * 10**9),
                                             ("512MiB", 512 * 1024**2), ("1500000", 1_500_000),
                                             ("1.5g", 1_500_000_000)])
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["lots", "-1GB", "8 parsecs", "0"])
def test_parse_bytes_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(InputError, match="is not a size"):
        parse_bytes(text)


def test_the_default_budget_is_the_setting_else_what_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUNLEARN_MEMORY_BUDGET", "3GiB")
    assert default_memory_budget() == 3 * 1024**3
    monkeypatch.delenv("SOFTUNLEARN_MEMORY_BUDGET")
    available = default_memory_budget()
    assert available is not None and available > BASE_BYTES


def test_correct_refuses_a_job_over_the_budget_before_reading_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x0": rng.normal(size=200), "x1": rng.normal(size=200),
                          "y": rng.integers(0, 2, 200), "s": np.where(np.arange(200) % 2, "a", "b")})
    data = tmp_path / "d.parquet"
    frame.to_parquet(data, index=False)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"type": "mlp", "in_features": 2, "hidden": []}), encoding="utf-8")
    from safetensors.numpy import save_file

    model = tmp_path / "m.safetensors"
    save_file({"0.weight": np.zeros((1, 2), np.float32), "0.bias": np.zeros(1, np.float32)}, str(model))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "workers.cli.main", "correct", "--model", str(model),
               "--arch", str(arch), "--train", str(data), "--audit", str(data), "--label", "y",
               "--sensitive", "s", "--objective", "demographic_parity", "--out", str(out),
               "--memory-budget", "100MB"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "needs about 0.7" in run.stderr and "budget is 0.10 GB" in run.stderr
    assert str(tmp_path) not in run.stderr and not out.exists()
