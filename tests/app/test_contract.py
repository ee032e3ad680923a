"""Contract and packaging checks: OpenAPI drift, torch-free API, health/metrics, Docker files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

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


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    torch_line = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    assert "download.pytorch.org/whl/cpu" in lines[torch_line]
    assert torch_line < next(i for i, line in enumerate(lines) if line == "RUN pip install .")
    user = [line for line in lines if line.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("root", "0"))
    assert any(line.startswith("CMD") and "serve" in line for line in lines)


def test_docker_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "gpu-worker", "redis"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "--requirepass" in redis_cmd and "ports" not in services["redis"]
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("api", "worker", "gpu-worker"):
        service = services[name]
        assert service["command"][0] == "softunlearn"
        assert any(v.endswith(":/data/store") for v in service["volumes"])
        env = service["environment"]
        assert {"REDIS_URL", "SOFTUNLEARN_STORE", "SOFTUNLEARN_API_KEYS"} <= set(env)
    assert services["worker"]["command"][1] == "worker" and services["api"]["command"][1] == "serve"
    assert set(compose["volumes"]) >= {"store", "redis-data"}
    assert Path(ROOT / "Dockerfile").exists()
