"""The S3 store unreachable: the API still starts, requests that need the store are answered 503
+ Retry-After, never 500, and the answer names no endpoint, bucket or credential (the log has
them for the operator)."""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path

import pytest

from app.main import create_app
from tests.app.support import TestClient, auth, make_settings
from workers.settings import ServiceSettings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_requests_needing_an_unreachable_store_are_503_not_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    settings = ServiceSettings(**{**make_settings(tmp_path / "store", "storedown").model_dump(),
                                  "store": "s3://unreachable-bucket/p", "s3_endpoint_url": endpoint})
    with TestClient(create_app(settings, reconcile=False), raise_server_exceptions=False) as client:
        # It starts all the same (garbage collection skipped); liveness holds, readiness fails.
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        with caplog.at_level(logging.ERROR, logger="app.errors"):
            responses = [client.get(f"/v1/models/{uuid.uuid4()}", headers=auth()),
                         client.get("/v1/jobs", headers=auth()),
                         client.post("/v1/models", headers=auth(),
                                     files={"file": ("m.safetensors", b"x" * 64)})]
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] and response.json()["code"] == "store_unavailable"
            assert "127.0.0.1" not in response.text and "unreachable-bucket" not in response.text
        assert "cannot reach the S3 endpoint" in caplog.text
