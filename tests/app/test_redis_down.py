"""Redis unreachable: submissions are refused with 503 and Retry-After, never 500; readiness
fails while liveness holds; reads from the store keep working."""

from __future__ import annotations

import socket
from pathlib import Path

from app.main import create_app
from tests.app.support import TestClient, auth, job_body, make_settings, upload_example
from workers.engine.examples.common import ExampleInfo


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_submission_is_503_with_retry_after_when_redis_is_down(tmp_path: Path,
                                                              adult_example: ExampleInfo) -> None:
    settings = make_settings(tmp_path / "store", "down",
                             redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    with TestClient(create_app(settings, reconcile=False), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        ids = upload_example(client, adult_example)
        response = client.post("/v1/jobs", headers=auth(), json=job_body(ids))
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        assert response.json()["code"] == "queue_unavailable"
        assert client.get(f"/v1/models/{ids['model_id']}", headers=auth()).status_code == 200
        listing = client.get("/v1/jobs", headers=auth())
        assert listing.status_code == 200 and listing.json()["items"] == []
