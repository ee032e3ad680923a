"""Job metrics in Redis: what a writer records is what the API's collector reports (cumulative
buckets, labels), and a terminal state the reconciler sets is counted and logged like a worker's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.job_collector import JobMetricsCollector
from models_store import Records
from models_store.keys import new_id
from models_store.records import JobRecord, utcnow
from tests.app.support import store_of
from workers import job_metrics
from workers.reconcile import reconcile_job
from workers.settings import ServiceSettings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def connection(settings: ServiceSettings) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(settings.redis_url) as client:
        yield client


def _scrape(connection: redis.Redis, settings: ServiceSettings) -> Samples:
    registry = CollectorRegistry()
    registry.register(JobMetricsCollector(connection, settings))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_what_is_written_is_what_is_scraped(connection: redis.Redis, settings: ServiceSettings) -> None:
    prefix = settings.queue_prefix
    assert job_metrics.record_outcome(connection, prefix, "cpu", "succeeded", None, 0.3,
                                      {"influence": 2.0, "evaluate": 0.05, "total": 9.0})
    assert job_metrics.record_outcome(connection, prefix, "gpu", "failed", "infeasible", 4000.0)
    assert job_metrics.record_webhook_delivery(connection, prefix, "delivered")
    assert job_metrics.record_webhook_delivery(connection, prefix, "weird outcome|x")
    samples = _scrape(connection, settings)
    assert samples[("softunlearn_jobs_finished_total", (("code", "none"), ("queue", "cpu"),
                                                        ("status", "succeeded")))] == 1
    assert samples[("softunlearn_jobs_finished_total", (("code", "infeasible"), ("queue", "gpu"),
                                                        ("status", "failed")))] == 1
    influence = (("stage", "influence"),)
    assert samples[("softunlearn_job_stage_seconds_bucket", (("le", "1.0"), *influence))] == 0
    assert samples[("softunlearn_job_stage_seconds_bucket", (("le", "2.5"), *influence))] == 1
    assert samples[("softunlearn_job_stage_seconds_bucket", (("le", "+Inf"), *influence))] == 1
    assert samples[("softunlearn_job_stage_seconds_sum", influence)] == 2.0
    assert ("softunlearn_job_stage_seconds_count", (("stage", "total"),)) not in samples
    slow = (("queue", "gpu"), ("status", "failed"))
    assert samples[("softunlearn_job_duration_seconds_bucket", (("le", "7200.0"), *slow))] == 1
    assert samples[("softunlearn_job_duration_seconds_bucket", (("le", "3600.0"), *slow))] == 0
    assert samples[("softunlearn_webhook_deliveries_total", (("outcome", "delivered"),))] == 1
    assert samples[("softunlearn_webhook_deliveries_total", (("outcome", "other"),))] == 1
    assert samples[("softunlearn_queue_depth", (("queue", "cpu"),))] == 0


def test_a_write_to_an_unreachable_redis_returns_false() -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    assert job_metrics.record_outcome(dead, "p", "cpu", "succeeded", None, 1.0) is False


def test_a_job_the_reconciler_fails_is_counted_and_logged(connection: redis.Redis, settings: ServiceSettings,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    records = Records(store_of(settings))
    past = utcnow() - timedelta(minutes=5)
    record = JobRecord(id=new_id(), tenant="acme", request={"model_id": new_id()}, spec={}, queue="cpu",
                       created_at=past, updated_at=past, started_at=past, enqueued_at=past,
                       request_hash="h", status="running", attempts=settings.max_attempts,
                       request_id="req-lost-1")
    assert records.create_job(record)
    with caplog.at_level(logging.INFO, logger="workers.jobs"):
        updated = reconcile_job(records, connection, settings, record)  # RQ has no such job: lost
    assert updated.status == "failed" and updated.error is not None and updated.error.code == "lost"
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "job_failed"]
    assert line.levelno == logging.WARNING and getattr(line, "code", None) == "lost"
    assert getattr(line, "request_id", None) == "req-lost-1" and getattr(line, "job_id", None) == record.id
    samples = _scrape(connection, settings)
    assert samples[("softunlearn_jobs_finished_total", (("code", "lost"), ("queue", "cpu"),
                                                        ("status", "failed")))] == 1
    assert samples[("softunlearn_job_duration_seconds_count", (("queue", "cpu"), ("status", "failed")))] == 1
