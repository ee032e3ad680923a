"""``X-Request-ID``: a valid one is echoed, another is replaced, none gets one; a job records the
id of the POST that created it. ``/metrics`` with Redis down still answers."""

from __future__ import annotations

import socket
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from models_store import Records
from tests.app.support import TestClient, auth, job_body, make_settings, store_of, upload_example
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings


def test_the_request_id_is_echoed_or_made(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "pipeline-run-42"})
    assert given.headers["x-request-id"] == "pipeline-run-42"
    for bad in ("x" * 129, "two words"):
        replaced = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert len(replaced) == 32 and int(replaced, 16) >= 0
    made = client.get("/v1/jobs/nope", headers=auth()).headers["x-request-id"]
    assert len(made) == 32 and made != replaced


def test_a_job_records_the_request_id_of_its_post(client: TestClient, settings: ServiceSettings,
                                                  adult_example: ExampleInfo) -> None:
    ids = upload_example(client, adult_example)
    response = client.post("/v1/jobs", headers={**auth(), "X-Request-ID": "submit-7"}, json=job_body(ids))
    assert response.status_code == 202 and response.headers["x-request-id"] == "submit-7"
    record = Records(store_of(settings)).get_job("acme", response.json()["id"])
    assert record is not None and record.request_id == "submit-7"


def test_metrics_answer_with_redis_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(tmp_path / "store", "down", redis_url=f"redis://127.0.0.1:{port}/0")
    with TestClient(create_app(settings, reconcile=False)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    samples = {s.name: s.value for f in text_string_to_metric_families(response.text) for s in f.samples}
    assert samples["softunlearn_metrics_redis_up"] == 0
    assert samples["process_resident_memory_bytes"] > 0
    assert not any(name.startswith("softunlearn_queue_depth") for name in samples)
