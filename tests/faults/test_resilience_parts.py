"""The parts of outage handling that need no processes: backoff, the bounded outage log, the
job lease in the manifest, and the supervisor's restart decision."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from models_store import LocalStore, Records
from models_store.records import JobRecord, utcnow
from workers import lease, resilience
from workers.jobs import _Claim
from workers.resilience import Backoff, OutageLog


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next_delay() for _ in range(8)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(step / 2 <= delay <= step for delay, step in zip(delays, steps, strict=True)), delays
    assert len(set(delays)) > 1
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_outage_log_is_one_warning_then_at_most_one_line_a_minute(caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    outage = OutageLog(Backoff(0.5, 30.0))
    error = redis.exceptions.ConnectionError("Connection refused")
    with caplog.at_level(logging.INFO, logger="rq.worker"):
        for _ in range(600):  # ten minutes of failures, one a second
            outage.failed(error, "sending the heartbeat of a running job")
            clock[0] += 1.0
        outage.recovered()
        outage.recovered()
    lines = [record for record in caplog.records if record.name == "rq.worker"]
    assert lines[0].levelno == logging.WARNING and "unreachable" in lines[0].getMessage()
    assert lines[-1].levelno == logging.INFO and "reachable again after 600.0 s" in lines[-1].getMessage()
    assert len(lines) == 1 + 9 + 1, [line.getMessage() for line in lines]  # a "still" line a minute
    assert not outage.down


def test_pause_ends_at_once_on_a_stop_request() -> None:
    outage = OutageLog(Backoff(30.0, 30.0))
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert outage.pause(stop.is_set) is False
    assert time.monotonic() - started < 5


def _record(store: Path, **fields: Any) -> Records:
    records = Records(LocalStore(store))
    now = utcnow()
    record = JobRecord(id="7b0c3f4e-0000-4000-8000-000000000001", tenant="acme", request={}, spec={},
                       queue="cpu", created_at=now, updated_at=now, request_hash="h", **fields)
    assert records.create_job(record)
    return records


def test_a_live_lease_refuses_a_claim_a_released_or_lapsed_one_does_not(tmp_path: Path) -> None:
    job_id = "7b0c3f4e-0000-4000-8000-000000000001"
    records = _record(tmp_path, status="running", worker_pid=4242, attempts=1)
    claim = _Claim(lease_s=10.0)
    records.update_job("acme", job_id, claim)
    assert (claim.held, claim.claimed) == (True, False)

    lease.release(records, "acme", job_id, pid=1)  # someone else's pid: not released
    assert records.get_job("acme", job_id).worker_pid == 4242  # type: ignore[union-attr]
    lease.release(records, "acme", job_id, pid=4242)
    claim = _Claim(lease_s=10.0)
    record = records.update_job("acme", job_id, claim)
    assert (claim.held, claim.claimed, record.attempts) == (False, True, 2)

    def age(current: JobRecord) -> JobRecord:
        current.worker_pid = 99
        return current

    records.update_job("acme", job_id, age)
    stale = records.get_job("acme", job_id)
    assert stale is not None
    assert lease.held(stale, 10.0)
    assert not lease.held(stale.model_copy(update={"updated_at": utcnow() - timedelta(seconds=11)}), 10.0)


def test_a_waiting_claim_returns_once_the_holder_finishes(tmp_path: Path) -> None:
    job_id = "7b0c3f4e-0000-4000-8000-000000000001"
    records = _record(tmp_path, status="running", worker_pid=4242, attempts=1)

    def finish(current: JobRecord) -> JobRecord:
        current.status = "succeeded"
        return current

    threading.Timer(1.0, lambda: records.update_job("acme", job_id, finish)).start()
    started = time.monotonic()
    record, claimed = lease.claim(records, "acme", job_id, lambda: _Claim(lease_s=60.0))
    assert (record.status, record.attempts, claimed) == ("succeeded", 1, False)
    assert time.monotonic() - started >= 0.9


def test_the_lease_keeper_renews_while_running(tmp_path: Path) -> None:
    job_id = "7b0c3f4e-0000-4000-8000-000000000001"
    records = _record(tmp_path, status="running", worker_pid=4242, attempts=1)
    first = records.get_job("acme", job_id)
    assert first is not None
    with lease.LeaseKeeper(records, "acme", job_id, 4242, lease_s=0.4):
        time.sleep(0.5)
    renewed = records.get_job("acme", job_id)
    assert renewed is not None and renewed.updated_at > first.updated_at


class _FakeWorker:
    """What :func:`resilience.supervise` reads of a worker after ``work()``."""

    def __init__(self, name: str, redis_failure: BaseException | None = None,
                 loop_error: BaseException | None = None) -> None:
        self.name, self.redis_failure, self.loop_error = name, redis_failure, loop_error
        self.stop_signaled, self._stop_requested, self.deaths = False, False, 0

    def register_death(self) -> None:
        self.deaths += 1


class _Ping:
    def __init__(self, failures: int) -> None:
        self.failures = failures

    def ping(self) -> bool:
        if self.failures:
            self.failures -= 1
            raise redis.exceptions.ConnectionError("Connection refused")
        return True


def test_supervisor_restarts_after_redis_errors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    default_term = signal.getsignal(signal.SIGTERM)
    default_int = signal.getsignal(signal.SIGINT)
    try:
        first = _FakeWorker("w", redis_failure=redis.exceptions.ConnectionError("gone"))
        made: list[str] = []
        second = _FakeWorker("w")

        def make(name: str) -> Any:
            made.append(name)
            return second

        outage = OutageLog(Backoff(0.01, 0.02))
        code = resilience.supervise(first, make, _Ping(3), outage, lambda worker: None)  # type: ignore[arg-type]
        assert (code, made, first.deaths) == (0, ["w"], 1)  # restarted once, same name, then a normal end

        crashed = _FakeWorker("w", loop_error=ValueError("a bug"))
        assert resilience.supervise(crashed, make, _Ping(0), outage, lambda worker: None) == 1  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGTERM, default_term)
        signal.signal(signal.SIGINT, default_int)
