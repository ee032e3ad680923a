"""End to end with a real forked RQ worker: upload → submit → succeeded → download; same as the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.app.support import ROOT, TestClient, auth, job_body, upload_example, wait_for, worker_process
from tests.engine.examples.test_colored_mnist import assert_gap_cut
from workers.engine.examples.common import ExampleInfo
from workers.reporting.schema import validate_report
from workers.settings import ServiceSettings

COMPARED = ("before", "after", "predicted", "weights", "target", "spec", "frontier", "confidence", "warnings")


def cli_report(example: ExampleInfo, spec: dict[str, object], out: Path) -> dict[str, object]:
    """What ``softunlearn correct --spec`` writes for the same spec and seed."""
    spec_file = out.parent / "spec.json"
    spec_file.write_text(json.dumps(spec))
    d = example.out_dir
    args = ["correct", "--objective", "demographic_parity", "--model", str(d / "model.safetensors"),
            "--arch", str(d / "arch.json"), "--train", str(d / "train.parquet"),
            "--audit", str(d / "audit.parquet"), "--eval", str(d / "eval.parquet"),
            "--schema", str(d / "schema.json"), "--spec", str(spec_file), "--device", "cpu",
            "--out", str(out), "--quiet"]
    command = [sys.executable, "-m", "workers.cli.main", *args]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report: dict[str, object] = json.loads((out / "report.json").read_text())
    return report


def test_correction_over_http_matches_the_cli(client: TestClient, settings: ServiceSettings,
                                              adult_example: ExampleInfo, tmp_path: Path) -> None:
    ids = upload_example(client, adult_example)
    body = job_body(ids)
    with worker_process(settings, tmp_path / "worker.log"):
        started = time.monotonic()
        job = client.post("/v1/jobs", headers=auth(), json=body).json()
        seen = set()
        while job["status"] not in ("succeeded", "failed", "canceled"):
            seen.add(job["stage"])
            time.sleep(0.1)
            job = client.get(f"/v1/jobs/{job['id']}", headers=auth()).json()
        elapsed = time.monotonic() - started
    assert job["status"] == "succeeded", (job, (tmp_path / "worker.log").read_text()[-3000:])
    print(f"end-to-end job time {elapsed:.1f} s; stages seen {sorted(map(str, seen))}")
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["device"] == "cpu"

    model = client.get(f"/v1/jobs/{job['id']}/model", headers=auth())
    assert model.status_code == 200 and model.headers["content-type"] == "application/octet-stream"
    (tmp_path / "corrected.safetensors").write_bytes(model.content)
    corrected = load_file(tmp_path / "corrected.safetensors")
    original = load_file(adult_example.out_dir / "model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in corrected.items()} == \
        {k: (v.shape, v.dtype) for k, v in original.items()}
    arch = json.loads((adult_example.out_dir / "arch.json").read_text())
    widths = [arch["in_features"], *arch["hidden"], 1]
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [torch.nn.Linear(widths[i], widths[i + 1]), torch.nn.ReLU()]
    torch.nn.Sequential(*layers[:-1]).load_state_dict(corrected)

    report = client.get(f"/v1/jobs/{job['id']}/report", headers=auth()).json()
    html = client.get(f"/v1/jobs/{job['id']}/report.html", headers=auth())
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in html.headers["content-security-policy"]
    assert html.headers["x-content-type-options"] == "nosniff" and html.headers["cache-control"] == "no-store"
    spec = {k: body[k] for k in ("objective", "weighting", "method", "evaluation")}
    reference = cli_report(adult_example, spec, tmp_path / "cli")
    for key in COMPARED:
        assert report[key] == reference[key], key
    validate_report(report)
    check_provenance(client, job, ids, report, tmp_path / "corrected.safetensors")
    check_frontier_and_weights(client, job, report, tmp_path)


def check_provenance(client: TestClient, job: dict[str, Any], ids: dict[str, str], report: dict[str, Any],
                     corrected: Path) -> None:
    """The service's provenance names the job and the uploads' sha256 (recomputed from the files)."""
    provenance = report["provenance"]
    assert provenance["job_id"] == provenance["run_id"] == job["id"]
    model = client.get(f"/v1/models/{ids['model_id']}", headers=auth()).json()
    assert provenance["model_sha256"] == model["sha256"]
    for role in ("train", "audit", "eval"):
        uploaded = client.get(f"/v1/datasets/{ids[f'{role}_dataset_id']}", headers=auth()).json()
        assert provenance["datasets"][role] == uploaded["sha256"], role
    assert provenance["corrected_model_sha256"] == hashlib.sha256(corrected.read_bytes()).hexdigest()
    with safe_open(str(corrected), framework="pt") as handle:
        identity = json.loads(handle.metadata()["softunlearn"])
    assert identity["report_id"] == provenance["report_id"]
    assert identity["parent_sha256"] == model["sha256"]


def check_frontier_and_weights(client: TestClient, job: dict[str, Any], report: dict[str, Any],
                               tmp_path: Path) -> None:
    """``GET /frontier`` serves the report's frontier; ``GET /weights`` the per-sample weights."""
    assert {"frontier", "weights"} <= set(job["links"])
    frontier = client.get(job["links"]["frontier"], headers=auth())
    assert frontier.status_code == 200, frontier.text
    body = frontier.json()
    assert body["frontier"] == report["frontier"] and len(body["frontier"]) == 14
    assert body["frontier_info"] == report["frontier_info"]
    assert body["report_id"] == report["provenance"]["report_id"] and body["decision_split"] == "eval"
    weights = client.get(job["links"]["weights"], headers=auth())
    assert weights.status_code == 200 and weights.headers["content-type"] == "application/vnd.apache.parquet"
    (tmp_path / "weights.parquet").write_bytes(weights.content)
    table = pq.read_table(tmp_path / "weights.parquet")
    assert table.num_rows == report["data"]["train_rows"]
    assert min(table.column("epsilon").to_pylist()) == report["weights"]["min"]


def test_the_image_example_is_corrected_through_the_service(client: TestClient, settings: ServiceSettings,
                                                           colored_mnist_example: ExampleInfo,
                                                           tmp_path: Path) -> None:
    ids = upload_example(client, colored_mnist_example)
    spec = json.loads((colored_mnist_example.out_dir / "spec.json").read_text())
    with worker_process(settings, tmp_path / "worker.log"):
        job = client.post("/v1/jobs", headers=auth(), json={**ids, **spec}).json()
        job = wait_for(client, job["id"], ("succeeded", "failed", "canceled"), timeout=300)
    assert job["status"] == "succeeded", (job, (tmp_path / "worker.log").read_text()[-3000:])
    model = client.get(f"/v1/jobs/{job['id']}/model", headers=auth())
    (tmp_path / "corrected.safetensors").write_bytes(model.content)
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=auth()).json()
    validate_report(report)
    assert report["target_met"] is True
    assert_gap_cut(colored_mnist_example, load_file(tmp_path / "corrected.safetensors"), report,
                   "demographic_parity")
