"""The client's typed outcomes of ``wait()`` and its reuse of earlier uploads (the transport is
scripted: what is under test is what the client does with the answers)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import JobCanceled, JobFailed, RetryPolicy, SoftUnlearnClient


def client_answering(job: dict[str, Any]) -> SoftUnlearnClient:
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json=job))
    return SoftUnlearnClient("http://svc", "k", transport=transport, retry=RetryPolicy(sleep=lambda _s: None))


def test_wait_raises_typed_errors_for_failed_and_canceled_jobs() -> None:
    failed = {"id": "j1", "status": "failed", "error": {"code": "infeasible", "message": "no weights fit"}}
    with pytest.raises(JobFailed) as raised:
        client_answering(failed).wait("j1", interval=0)
    assert raised.value.code == "infeasible" and raised.value.message == "no weights fit"
    assert raised.value.job == failed
    with pytest.raises(JobCanceled):
        client_answering({"id": "j1", "status": "canceled"}).wait("j1", interval=0)
    assert client_answering(failed).wait("j1", interval=0, raise_on_failure=False) == failed


def test_an_upload_with_the_same_bytes_and_architecture_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    arch = {"type": "linear_head", "in_features": 4}
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        if request.method == "GET":
            items = [{"id": "old-other", "sha256": digest, "architecture": {"type": "mlp"}},
                     {"id": "old", "sha256": digest, "architecture": arch}]
            return httpx.Response(200, json={"items": items, "total": 2})
        return httpx.Response(201, json={"id": "new", "sha256": digest, "architecture": arch})

    client = SoftUnlearnClient("http://svc", "k", transport=httpx.MockTransport(answer))
    reused = client.upload_model(path, arch, reuse=True)
    assert reused == {"id": "old", "sha256": digest, "architecture": arch, "reused": True}
    assert seen == [f"GET /v1/models?sha256={digest}&limit=200"]
    assert client.upload_model(path, {**arch, "in_features": 5}, reuse=True)["id"] == "new"
    assert client.upload_model(path, arch)["id"] == "new"
    assert [s.split("?")[0] for s in seen[1:]] == ["GET /v1/models", "POST /v1/models", "POST /v1/models"]
