"""What ``softunlearn correct`` writes: provenance that can be recomputed from the files, a
checkpoint that points back at its parent and its report, and the per-sample weights."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from tests.conftest import example_args, run_correct
from workers.engine.examples.common import ExampleInfo

pytestmark = pytest.mark.slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def written(adult_example: ExampleInfo, tmp_path_factory: pytest.TempPathFactory,
            ) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("outputs")
    report = run_correct(example_args(adult_example, out, "--objective", "demographic_parity",
                                      "--no-robust-eval", "--seed", "7"), out)
    return out, report


def test_provenance_hashes_are_those_of_the_files(written: tuple[Path, dict[str, Any]],
                                                  adult_example: ExampleInfo) -> None:
    out, report = written
    provenance = report["provenance"]
    d = adult_example.out_dir
    assert provenance["model_sha256"] == _sha256(d / "model.safetensors")
    assert provenance["datasets"] == {role: _sha256(d / f"{role}.parquet")
                                      for role in ("train", "audit", "eval")}
    assert provenance["corrected_model_sha256"] == _sha256(out / "model.safetensors")
    assert provenance["job_id"] is None and provenance["run_id"] == f"cli-{provenance['report_id']}"
    assert provenance["seeds"] == {"job": 7, "bootstrap": 7} and provenance["spec"] == report["spec"]
    created = datetime.fromisoformat(provenance["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and abs((datetime.now(UTC) - created).total_seconds()) < 3600
    assert provenance["device"] == report["device"] == "cpu"
    assert provenance["version"] and provenance["software"]["torch"].startswith("2.")


def test_the_corrected_checkpoint_points_at_its_parent_and_report(written: tuple[Path, dict[str, Any]],
                                                                  adult_example: ExampleInfo) -> None:
    out, report = written
    with safe_open(str(out / "model.safetensors"), framework="numpy") as handle:
        identity = json.loads(handle.metadata()["softunlearn"])
    assert identity["parent_sha256"] == _sha256(adult_example.out_dir / "model.safetensors")
    assert identity["report_id"] == report["provenance"]["report_id"]
    assert identity["version"] == report["provenance"]["version"]


def test_the_weights_file_holds_every_training_row(written: tuple[Path, dict[str, Any]]) -> None:
    out, report = written
    table = pq.read_table(out / "weights.parquet")
    assert table.column_names == ["row", "epsilon", "weight"]
    rows, eps, weight = (table.column(name).to_numpy() for name in table.column_names)
    assert rows.tolist() == list(range(report["data"]["train_rows"]))
    np.testing.assert_allclose(weight, 1.0 + eps, rtol=0, atol=1e-15)
    assert eps.min() == pytest.approx(report["weights"]["min"])
    assert eps.max() == pytest.approx(report["weights"]["max"])
    assert float(np.linalg.norm(eps)) == pytest.approx(report["weights"]["l2_norm"])
    assert int((eps < -1e-12).sum()) == report["weights"]["down_weighted"] > 0
    histogram = report["weights"]["histogram"]
    assert sum(histogram["counts"]) == len(rows) and len(histogram["edges"]) == len(histogram["counts"]) + 1
