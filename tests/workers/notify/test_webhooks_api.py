"""Webhooks through the service: a real job with a real worker notifies a real receiver, a
canceled queued job notifies (with retries, made by the API's reconciler), refused URLs are 422,
and tenants read their secret."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import create_app
from tests.app.support import (
    KEY_B,
    TestClient,
    auth,
    flush_test_db,
    job_body,
    make_settings,
    upload_example,
    worker_process,
)
from tests.app.support import wait_for as wait_for_job
from tests.workers.notify.support import SECRET, Receiver, receiver
from workers.engine.examples.common import ExampleInfo
from workers.notify.signing import verify
from workers.settings import ServiceSettings

WEBHOOKS = {"webhook_allow_http": True, "webhook_allow_private": True, "webhook_secrets": f"acme:{SECRET}",
            "webhook_retry_min_s": 0.2, "webhook_retry_max_s": 0.5}
WORKER_ENV = {"SOFTUNLEARN_WEBHOOK_ALLOW_HTTP": "1", "SOFTUNLEARN_WEBHOOK_ALLOW_PRIVATE": "1",
              "SOFTUNLEARN_WEBHOOK_SECRETS": f"acme:{SECRET}"}
NO_SUCH_ID = "3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"
FAST = {"method": {"name": "newton", "max_iterations": 1},
        "evaluation": {"robustness": False, "n_boot": 100, "frontier": {"reductions": [], "k_fractions": []}}}
"""A quick job: the event, not the correction, is under test."""


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[Receiver]:
    with receiver(tmp_path / "received.jsonl") as running:
        yield running


@pytest.fixture
def webhook_settings(tmp_path: Path) -> Iterator[ServiceSettings]:
    flush_test_db()
    yield make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}", reconcile_interval_s=0.3, **WEBHOOKS)
    flush_test_db()


def test_terminal_jobs_notify_the_receiver(webhook_settings: ServiceSettings, hooks: Receiver,
                                           adult_example: ExampleInfo, tmp_path: Path) -> None:
    with TestClient(create_app(webhook_settings)) as client:  # with its reconciler: it makes the retries
        ids = upload_example(client, adult_example)
        # A queued job canceled by the API; its receiver fails twice before taking the event.
        queued = client.post("/v1/jobs", headers=auth(), json=job_body(
            ids, queue="gpu", notify={"url": hooks.url("/fail2/canceled")})).json()
        assert client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth()).json()["status"] == "canceled"
        with worker_process(webhook_settings, tmp_path / "worker.log", **WORKER_ENV):
            job = client.post("/v1/jobs", headers=auth(), json=job_body(
                ids, notify={"url": hooks.url("/ok/job?run=1")}, **FAST)).json()
            done = wait_for_job(client, job["id"], ("succeeded", "failed", "canceled"), timeout=120)
        assert done["status"] == "succeeded", (tmp_path / "worker.log").read_text()[-3000:]

        [got] = hooks.received("/ok/job")
        assert got["valid"] and got["id"] == f"msg_{job['id'].replace('-', '')}"
        event = got["event"]
        assert event["type"] == "job.succeeded" and event["data"]["status"] == "succeeded"
        assert event["data"]["job_id"] == job["id"] and event["data"]["error"] is None
        assert isinstance(event["data"]["target_met"], bool)
        assert event["data"]["links"]["report"] == f"/v1/jobs/{job['id']}/report"
        # The worker made the attempt as the job ended, so GET shows it at once.
        [attempt] = client.get(f"/v1/jobs/{job['id']}", headers=auth()).json()["notifications"]
        assert attempt["delivered"] and attempt["status_code"] == 200 and attempt["attempt"] == 1
        assert attempt["url"] == hooks.url("/ok/job") + "?…" and attempt["event_id"] == got["id"]

        canceled = hooks.wait_for("/fail2/canceled", 3)
        assert [c["answered"] for c in canceled] == [500, 500, 200] and all(c["valid"] for c in canceled)
        assert len({c["id"] for c in canceled}) == 1 and canceled[0]["event"]["type"] == "job.canceled"
        shown = wait_for_notifications(client, queued["id"], 3)
        assert [n["status_code"] for n in shown] == [500, 500, 200] and shown[-1]["delivered"]
        assert shown[0]["next_attempt_at"] is not None and shown[-1]["next_attempt_at"] is None
        assert hooks.received("/ok/job") == [got], "delivered once"

        secret = client.get("/v1/webhooks/secret", headers=auth()).json()["secret"]
        assert secret == SECRET
        # The receiver checked the signature with plain hmac; the documented verify() agrees.
        verify(secret, got["body"].encode(), {"webhook-id": got["id"], "webhook-timestamp": got["timestamp"],
                                             "webhook-signature": got["signature"]})
        other = client.get("/v1/webhooks/secret", headers=auth(KEY_B))
        assert other.status_code == 404 and other.json()["code"] == "webhook_not_configured"


def wait_for_notifications(client: TestClient, job_id: str, count: int,
                           timeout: float = 10.0) -> list[dict[str, object]]:
    """The job's delivery attempts once there are ``count`` (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        shown: list[dict[str, object]] = client.get(f"/v1/jobs/{job_id}",
                                                    headers=auth()).json()["notifications"]
        if len(shown) >= count or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


@pytest.mark.parametrize(("url", "allow_local", "why"), [
    ("http://127.0.0.1:9/hook", False, "scheme 'http' is not allowed"),
    ("https://127.0.0.1/hook", False, "loopback"),
    ("https://169.254.169.254/latest/meta-data/", False, "link-local"),
    ("http://169.254.169.254/latest/meta-data/", True, "link-local"),
    ("https://[::ffff:127.0.0.1]/hook", False, "loopback"),
    ("https://user:secret@hooks.example.com/", False, "credentials"),
])
def test_refused_urls_are_422(tmp_path: Path, url: str, allow_local: bool, why: str) -> None:
    overrides = {"webhook_secrets": f"acme:{SECRET}"}
    if allow_local:
        overrides |= {"webhook_allow_http": True, "webhook_allow_private": True}  # type: ignore[dict-item]
    settings = make_settings(tmp_path / "store", "t-refused", **overrides)
    with TestClient(create_app(settings, reconcile=False)) as client:
        ids = {k: NO_SUCH_ID for k in ("model_id", "train_dataset_id", "audit_dataset_id")}
        response = client.post("/v1/jobs", headers=auth(), json=job_body(ids, notify={"url": url}))
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "notify_url_refused" and body["errors"][0]["field"] == "notify.url"
        assert why in body["detail"] and "user:secret" not in body["detail"], body
        # A tenant without a secret is told what the operator must set.
        response = client.post("/v1/jobs", headers=auth(KEY_B), json=job_body(ids, notify={"url": url}))
        assert response.status_code == 422 and response.json()["code"] == "webhook_not_configured"
        assert "SOFTUNLEARN_WEBHOOK_SECRETS" in response.json()["detail"]
