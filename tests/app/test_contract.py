"""Contract checks: OpenAPI drift, torch-free API, health/metrics (Docker files: tests/test_deploy.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from app.openapi import DEFAULT_PATH, render
from tests.app.support import ROOT, TestClient, auth


def test_committed_openapi_matches_the_app() -> None:
    committed = DEFAULT_PATH.read_text(encoding="utf-8")
    assert committed == render(), "openapi/openapi.json is stale: run `python -m app.openapi`"
    paths = json.loads(committed)["paths"]
    for path in ("/v1/models", "/v1/datasets", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/report", "/v1/jobs/{job_id}/report.html", "/v1/jobs/{job_id}/model",
                 "/v1/jobs/{job_id}/frontier", "/v1/jobs/{job_id}/weights",
                 "/healthz", "/readyz", "/metrics"):
        assert path in paths, path


def test_the_api_never_imports_torch() -> None:
    code = ("import sys, app.main, app.openapi, app.client, workers.queue, workers.reconcile; "
            "app.openapi.schema(); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            check=True)
    assert result.stdout.strip() == "False", result.stderr


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "store": "ok", "disk": "ok"}
    client.get("/v1/jobs", headers=auth())
    text = client.get("/metrics").text
    assert 'softunlearn_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
