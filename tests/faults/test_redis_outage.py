"""Redis dies under two real workers while jobs run and wait, and comes back: every job still
succeeds with no human action, the same worker processes run them, no job runs twice at once,
and the workers' logs about the outage stay short.

Redis is a private ``redis-server`` (own port and directory) killed with SIGKILL. With AOF
(fsync always) it comes back with its queues; without persistence it comes back empty, and the
API's reconciler must re-enqueue the lost jobs: those that were queued (they then run) and those
that were running (their re-enqueued copy must wait for the running execution, then do nothing).
The old worker quit at its first failed heartbeat while a job ran (``job_monitoring_interval`` =
1 s here), so both outages are far past its failure point.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from rq import Worker

from app.main import create_app
from models_store import Records
from tests.app.support import TestClient, auth, make_settings, store_of, upload_example, wait_for
from tests.faults.support import (
    TERMINAL,
    claims,
    executions,
    outage_lines,
    overlapping,
    quick_job,
    traced_workers,
    wait_listening,
)
from tests.private_redis import PrivateRedis, private_redis
from workers.engine.examples.common import ExampleInfo

JOBS = 3
"""Two run on the two workers when Redis dies, one waits in the queue."""
RETRY_MAX_S = "3"
"""The workers' longest wait between Redis retries (SOFTUNLEARN_WORKER_REDIS_RETRY_MAX_S)."""
MAX_OUTAGE_LINES = 12
"""Per worker log: the outage's WARNING, its INFO, RQ's own line from the dequeue, and as many
again from a work horse that needed Redis to start or end its job (a line a second would be ~20)."""


def _wait_running(records: Records, job_ids: list[str], count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [records.get_job("acme", job_id) for job_id in job_ids]
        running = [job for job in jobs if job is not None and job.status == "running" and job.stage != "load"]
        if len(running) >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} jobs never ran at once: {[j.status if j else None for j in jobs]}")
        time.sleep(0.05)


def _statuses(records: Records, job_ids: list[str]) -> dict[str, str]:
    found = {job_id: records.get_job("acme", job_id) for job_id in job_ids}
    return {job_id: job.status if job else "missing" for job_id, job in found.items()}


def _wait_idle(server: PrivateRedis, count: int, timeout: float = 30.0) -> None:
    """Until RQ lists ``count`` workers, all idle (no horse left reporting to Redis)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = Worker.all(connection=redis.Redis.from_url(server.url))
        states = [str(getattr(worker.get_state(), "value", worker.get_state())) for worker in listed]
        if len(states) == count and all(state == "idle" for state in states):
            return
        assert time.monotonic() < deadline, f"workers never all idle: {states} {[w.name for w in listed]}"
        time.sleep(0.1)


def _rig(stack: contextlib.ExitStack, tmp_path: Path, example: ExampleInfo, persistent: bool, prefix: str,
         stage_delay_s: float) -> tuple[PrivateRedis, Records, TestClient, dict[str, str],
                                        list[subprocess.Popen[bytes]], list[Path]]:
    """A private Redis, an API with its reconciler and the example uploaded, and 2 traced workers
    (with ``stage_delay_s`` after each engine stage) listening; their logs."""
    server = stack.enter_context(private_redis(tmp_path / "redis", persistent))
    settings = make_settings(tmp_path / "store", prefix, redis_url=server.url)
    client = stack.enter_context(TestClient(create_app(settings, reconcile=True),
                                            raise_server_exceptions=False))
    ids = upload_example(client, example)
    slow = settings.model_copy(update={"debug_stage_delay_s": stage_delay_s})
    workers = stack.enter_context(traced_workers(slow, tmp_path, 2, OMP_NUM_THREADS="1",
                                                 SOFTUNLEARN_WORKER_REDIS_RETRY_MAX_S=RETRY_MAX_S))
    wait_listening(tmp_path, len(workers))
    logs = [tmp_path / f"worker-{i}.log" for i in range(len(workers))]
    return server, Records(store_of(settings)), client, ids, workers, logs


def _stop_promptly(server: PrivateRedis, workers: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Once every worker is idle, kill Redis again; once each worker is in its retry wait, SIGTERM
    must end it promptly. (A worker with a horse still running waits for it: a warm shutdown.)"""
    _wait_idle(server, len(workers))
    before = [len(outage_lines(log)) for log in logs]
    server.kill()
    deadline = time.monotonic() + 20
    while any(len(outage_lines(log)) <= seen for log, seen in zip(logs, before, strict=True)):
        assert time.monotonic() < deadline, "the workers never noticed the second outage"
        time.sleep(0.1)
    time.sleep(1.5)  # into the backoff waits
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    codes = [worker.wait(timeout=15) for worker in workers]
    print(f"SIGTERM during the retry wait: exit codes {codes} in {time.monotonic() - started:.1f} s")
    assert codes == [0] * len(workers), [log.read_text()[-1500:] for log in logs]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize(("persistent", "outage_s", "stage_delay_s"), [
    (True, 16.0, 0.8),  # the running jobs end during the outage; their horses wait to tell RQ
    (False, 8.0, 0.8),  # the queued job is lost with Redis: the reconciler re-enqueues it
], ids=["aof", "empty"])
def test_workers_outlive_a_redis_outage(tmp_path: Path, adult_example: ExampleInfo, persistent: bool,
                                        outage_s: float, stage_delay_s: float) -> None:
    with contextlib.ExitStack() as stack:
        server, records, client, ids, workers, logs = _rig(stack, tmp_path, adult_example, persistent,
                                                           "outage", stage_delay_s)
        pids = [worker.pid for worker in workers]
        job_ids = []
        for _ in range(JOBS):
            response = client.post("/v1/jobs", headers=auth(), json=quick_job(ids))
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        _wait_running(records, job_ids, 2)

        server.kill()
        at_kill = _statuses(records, job_ids)
        time.sleep(outage_s)  # the outage itself
        during = _statuses(records, job_ids)
        assert [worker.poll() for worker in workers] == [None, None], \
            [log.read_text()[-3000:] for log in logs]
        server.start()
        restarted = time.monotonic()

        finished = {job_id: wait_for(client, job_id, TERMINAL, timeout=90) for job_id in job_ids}
        elapsed = time.monotonic() - restarted
        print(f"statuses at the kill {list(at_kill.values())}, after {outage_s:.0f} s of outage "
              f"{list(during.values())}; all terminal {elapsed:.1f} s after Redis came back")
        assert {job["status"] for job in finished.values()} == {"succeeded"}, finished
        assert [worker.poll() for worker in workers] == [None, None]
        assert [worker.pid for worker in workers] == pids

        runs = executions(tmp_path)
        assert not overlapping(runs), overlapping(runs)
        per_job = {job_id: [run for run in runs if run.job == job_id] for job_id in job_ids}
        assert {job_id: len(found) for job_id, found in per_job.items()} == dict.fromkeys(job_ids, 1), runs
        assert {job_id: job["attempts"] for job_id, job in finished.items()} == dict.fromkeys(job_ids, 1)
        waiting = [job_id for job_id, status in at_kill.items() if status == "queued"]
        assert waiting, at_kill
        manifests = {job_id: records.get_job("acme", job_id) for job_id in job_ids}
        enqueues = {job_id: m.enqueues for job_id, m in manifests.items() if m is not None}
        print(f"enqueues per job {list(enqueues.values())}")
        if not persistent:  # the jobs that waited in the lost queue ran because they were enqueued again
            assert all(enqueues[job_id] >= 2 for job_id in waiting), enqueues

        counts = [len(outage_lines(log)) for log in logs]
        print(f"outage lines per worker log: {counts}")
        for log in logs:
            assert 2 <= len(outage_lines(log)) <= MAX_OUTAGE_LINES, outage_lines(log)
            assert "quitting" not in log.read_text()


LEASE_STAGE_DELAY_S = 1.0
"""The one job runs ~10 s or more: most of it after Redis is back, while its re-enqueued copy is out."""


@pytest.mark.slow
@pytest.mark.redis
def test_a_running_job_lost_by_redis_is_not_run_again_while_it_runs(tmp_path: Path,
                                                                    adult_example: ExampleInfo) -> None:
    """Redis comes back empty while a job runs; the reconciler re-enqueues it and the idle
    worker takes the copy at once: its horse must wait on the lease until the running execution
    ends, then leave the succeeded job alone. Then SIGTERM ends both workers in their retry wait."""
    with contextlib.ExitStack() as stack:
        server, records, client, ids, workers, logs = _rig(stack, tmp_path, adult_example, False, "lease",
                                                           LEASE_STAGE_DELAY_S)
        response = client.post("/v1/jobs", headers=auth(), json=quick_job(ids))
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        _wait_running(records, [job_id], 1)
        server.kill()
        time.sleep(3.0)  # past the old worker's failure point (its first heartbeat, 1 s here)
        server.start()

        job = wait_for(client, job_id, TERMINAL, timeout=90)
        assert (job["status"], job["attempts"]) == ("succeeded", 1), job
        record = records.get_job("acme", job_id)
        assert record is not None and record.enqueues >= 2, record  # it was re-enqueued
        (run,) = executions(tmp_path)
        assert run.end is not None
        found = claims(tmp_path)
        others = [claim for claim in found if claim.pid != run.pid]
        print(f"execution {run.start:.1f}-{run.end:.1f}; other claims "
              f"{[(round(c.asked, 1), round(c.answered, 1), c.claimed) for c in others]}")
        assert others, f"the re-enqueued copy never reached a horse: {found}"
        waited = [claim for claim in others if claim.asked < run.end]
        assert waited, f"the copy came after the execution ended; nothing to wait for: {others}"
        assert all(not claim.claimed and claim.answered >= run.end for claim in waited), waited
        assert [worker.poll() for worker in workers] == [None, None]
        _stop_promptly(server, workers, logs)
