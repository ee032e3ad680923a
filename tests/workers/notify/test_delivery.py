"""Delivery from the Redis outbox to a real receiver process: retries under one webhook-id,
410 stops, the retry window, the policy re-checked at delivery, one claim per attempt, https
pinned to the checked address, and the event of a job the reconciler fails."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from models_store import LocalStore, Records
from models_store.keys import new_id
from models_store.records import JobError, JobRecord, utcnow
from tests.app.support import flush_test_db, make_settings
from tests.workers.notify.support import SECRET, Receiver, receiver
from workers.job_metrics import metrics_key
from workers.notify.dispatch import (
    deliver_due,
    enqueue,
    notify_terminal,
    outbox_key,
)
from workers.queue import connect, enqueue_correction
from workers.reconcile import reconcile_all
from workers.settings import ServiceSettings

FAST_RETRIES = {"webhook_retry_min_s": 0.1, "webhook_retry_max_s": 0.3}


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with receiver(tmp_path_factory.mktemp("receiver") / "received.jsonl") as running:
        yield running


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Records, Redis, Any]]:
    """Records on a private store, the test Redis, and a factory of settings."""
    flush_test_db()
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def settings(**overrides: Any) -> ServiceSettings:
        values = {"webhook_allow_http": True, "webhook_allow_private": True,
                  "webhook_secrets": f"acme:{SECRET}", **FAST_RETRIES, **overrides}
        return make_settings(tmp_path / "store", prefix, **values)

    redis = connect(settings())
    yield Records(LocalStore(tmp_path / "store")), redis, settings
    flush_test_db()


def finished_job(records: Records, url: str, status: str = "failed", queue: str = "cpu") -> JobRecord:
    """A manifest (terminal unless ``status`` is queued) of a job that names ``url`` to notify."""
    now = utcnow()
    error = JobError(code="infeasible", message="no weights meet the target") if status == "failed" else None
    record = JobRecord(id=new_id(), tenant="acme", status=status, error=error,  # type: ignore[arg-type]
                       request={"model_id": new_id(), "notify": {"url": url}}, spec={}, queue=queue,
                       created_at=now, updated_at=now, enqueued_at=now, request_hash="x",
                       finished_at=None if status == "queued" else now)
    assert records.create_job(record)
    return record


def drain(records: Records, redis: Redis, settings: ServiceSettings, timeout: float = 10.0) -> None:
    """Run delivery passes until the outbox is empty."""
    deadline = time.monotonic() + timeout
    while redis.zcard(outbox_key(settings)):
        assert time.monotonic() < deadline, "the outbox never emptied"
        deliver_due(records, redis, settings)
        time.sleep(0.05)


def test_500_twice_then_200_is_three_attempts_under_one_webhook_id(
        hooks: Receiver, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    settings = make()
    record = finished_job(records, hooks.url(f"/fail2/{uuid.uuid4().hex}?token=t0k"))
    path = record.request["notify"]["url"].removeprefix(hooks.url("")).partition("?")[0]
    notify_terminal(records, redis, settings, record, deliver_now=True)
    assert len(hooks.received(path)) == 1, "the first attempt is made at once"
    drain(records, redis, settings)
    got = hooks.received(path)
    assert [g["answered"] for g in got] == [500, 500, 200]
    assert len({g["id"] for g in got}) == 1 and all(g["valid"] for g in got), got
    assert len({str(g["event"]) for g in got}) == 1, "every retry sends the same event"
    event = got[0]["event"]
    assert event["type"] == "job.failed" and event["data"]["job_id"] == record.id
    assert event["data"]["error"] == {"code": "infeasible", "message": "no weights meet the target"}
    assert got[0]["host"] == f"127.0.0.1:{hooks.port}"
    attempts = (records.get_job("acme", record.id) or record).notifications
    assert [(a.attempt, a.status_code, a.delivered) for a in attempts] == [(1, 500, False), (2, 500, False),
                                                                          (3, 200, True)]
    assert attempts[0].next_attempt_at is not None and attempts[-1].next_attempt_at is None
    assert all("t0k" not in a.url for a in attempts)
    counted = redis.hgetall(metrics_key(settings.queue_prefix, "webhook_deliveries"))
    assert int(counted[b"delivered"]) >= 1 and int(counted[b"retry"]) >= 2, counted
    # Putting the finished event into the outbox again is a no-op: it is delivered.
    assert not enqueue(redis, settings, records.get_job("acme", record.id) or record)


def test_410_gone_stops_at_once(hooks: Receiver, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    settings = make()
    record = finished_job(records, hooks.url(f"/gone/{uuid.uuid4().hex}"), status="canceled")
    notify_terminal(records, redis, settings, record, deliver_now=True)
    assert redis.zcard(outbox_key(settings)) == 0
    [attempt] = (records.get_job("acme", record.id) or record).notifications
    assert attempt.status_code == 410 and attempt.next_attempt_at is None and "410" in (attempt.error or "")


def test_retries_end_with_the_retry_window_and_redirects_are_not_followed(
        hooks: Receiver, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    settings = make(webhook_retry_for_s=0)
    path = f"/redirect/{uuid.uuid4().hex}"
    record = finished_job(records, hooks.url(path))
    notify_terminal(records, redis, settings, record, deliver_now=True)
    assert [g["answered"] for g in hooks.received(path)] == [307] and not hooks.received("/ok")
    [attempt] = (records.get_job("acme", record.id) or record).notifications
    assert attempt.status_code == 307 and "redirect" in (attempt.error or "")
    assert attempt.next_attempt_at is None
    assert redis.zcard(outbox_key(settings)) == 0


def test_the_policy_is_checked_again_at_delivery(hooks: Receiver, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    path = f"/ok/{uuid.uuid4().hex}"
    record = finished_job(records, hooks.url(path))  # accepted once, then the operator tightened the policy
    notify_terminal(records, redis, make(webhook_allow_private=False), record, deliver_now=True)
    assert hooks.received(path) == []
    [attempt] = (records.get_job("acme", record.id) or record).notifications
    assert attempt.error is not None and "loopback" in attempt.error and attempt.next_attempt_at is None


def test_concurrent_passes_make_each_attempt_once(hooks: Receiver, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    settings = make()
    path = f"/ok/{uuid.uuid4().hex}"
    record = finished_job(records, hooks.url(path), status="succeeded")
    assert enqueue(redis, settings, record)
    passes = [threading.Thread(target=deliver_due, args=(records, connect(settings), settings))
              for _ in range(4)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()
    assert len(hooks.received(path)) == 1
    assert hooks.received(path)[0]["event"]["data"]["target_met"] is None  # no report stored here


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for DNS name ``name`` and its key (openssl CLI)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_connects_to_the_checked_address_and_checks_the_certificate_by_name(
        tmp_path: Path, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    cert, key = self_signed(tmp_path, "localhost")
    with receiver(tmp_path / "tls.jsonl", tls=(cert, key)) as tls:
        good = finished_job(records, f"https://localhost:{tls.port}/ok/tls")
        notify_terminal(records, redis, make(webhook_ca_bundle=cert), good, deliver_now=True)
        [got] = tls.received("/ok/tls")
        assert got["valid"] and got["host"] == f"localhost:{tls.port}"  # pinned to 127.0.0.1, named localhost
        # A CA bundle that does not vouch for this certificate: the attempt fails the TLS check.
        other, _ = self_signed(tmp_path, "elsewhere.example")
        bad = finished_job(records, f"https://localhost:{tls.port}/ok/untrusted")
        notify_terminal(records, redis, make(webhook_ca_bundle=other, webhook_retry_for_s=0), bad,
                        deliver_now=True)
        assert tls.received("/ok/untrusted") == []
        [attempt] = (records.get_job("acme", bad.id) or bad).notifications
        assert attempt.status_code is None and "CERTIFICATE_VERIFY_FAILED" in (attempt.error or ""), attempt


def test_a_job_the_reconciler_fails_notifies(hooks: Receiver, rig: tuple[Records, Redis, Any]) -> None:
    records, redis, make = rig
    settings = make(no_worker_wait_s=0.0)
    path = f"/ok/{uuid.uuid4().hex}"
    queued = finished_job(records, hooks.url(path), status="queued", queue="gpu")
    enqueue_correction(redis, settings, "acme", queued.id, "gpu")  # a queue no worker listens on
    reconcile_all(records, redis, settings)
    assert (records.get_job("acme", queued.id) or queued).status == "failed"
    assert hooks.received(path) == [], "the reconciler queues the event; its delivery pass sends it"
    deliver_due(records, redis, settings)
    [got] = hooks.received(path)
    assert got["valid"] and got["event"]["type"] == "job.failed"
    assert got["event"]["data"]["error"]["code"] == "no_worker"
