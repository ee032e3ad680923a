"""``softunlearn demo`` as a user runs it: here with no Redis at REDIS_URL, so it starts its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.support import ROOT


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_demo_runs_end_to_end_and_starts_redis_when_none_answers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTUNLEARN_")}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    result = subprocess.run([sys.executable, "-m", "workers.cli.main", "demo", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "started redis-server" in out
    assert "job succeeded" in out and "same keys, shapes and dtypes as the input" in out
    assert "demographic_parity_difference" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["after"]["audit"]["demographic_parity_difference"] < \
        report["before"]["audit"]["demographic_parity_difference"]
    assert (tmp_path / "corrected.safetensors").stat().st_size > 0
    assert (tmp_path / "weights.parquet").stat().st_size > 0 and report["provenance"]["job_id"]
