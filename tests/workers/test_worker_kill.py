"""R2: ``kill -9`` of a whole worker (parent and work horse) while a job runs.

Nobody is left to update the job, so only RQ's heartbeat can reveal the death: the job's entry
in ``StartedJobRegistry`` expires ``min(remaining timeout, job_monitoring_interval) + 60`` s
after the last heartbeat (61 s in tests), then the API's reconciler runs
``StartedJobRegistry.cleanup()``, which re-enqueues the job while retries remain, else fails it
with ``AbandonedJobError``. The job must never stay ``running``.

RQ's work horse calls ``setpgrp()``, so it is *not* in its parent's process group: killing the
worker "as a whole" means ``SIGKILL`` to the worker's process group and to the horse's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer
from safetensors.torch import load_file

from app.main import create_app
from models_store import Records
from tests.app.support import (
    ROOT,
    TestClient,
    auth,
    job_body,
    running_horse_pid,
    store_of,
    upload_example,
    worker_env,
)
from tests.faults.support import kill_tree
from workers.engine.examples.common import ExampleInfo
from workers.queue import connect
from workers.settings import ServiceSettings

STAGE_DELAY_S = 0.7
"""Sleep after each engine stage of the first worker, so the job is surely mid-run when killed."""
DEADLINE_S = 120.0
"""From the kill to a terminal status: heartbeat TTL (1 + 60 s) + reconcile period (1 s) + re-run."""
TERMINAL = ("succeeded", "failed", "canceled")


@contextlib.contextmanager
def _worker(settings: ServiceSettings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``softunlearn worker`` in its own session (process group = its pid); on exit it and
    everything it forked are SIGKILLed, whatever the test did."""
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", "worker"],
                                   env=worker_env(settings), cwd=ROOT, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            kill_tree(process)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} survived SIGKILL")


def _poll_terminal(client: TestClient, job_id: str, deadline: float) -> tuple[dict[str, Any], list[str]]:
    """Poll ``GET /v1/jobs/{id}`` until terminal or ``deadline``; returns the job and the statuses seen."""
    seen: list[str] = []
    while True:
        response = client.get(f"/v1/jobs/{job_id}", headers=auth())
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in TERMINAL:
            return job, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job['status']} {DEADLINE_S:.0f} s after its worker was "
                                 f"killed (statuses seen: {seen}): {job}")
        time.sleep(0.5)


def _assert_outcome(records: Records, client: TestClient, job: dict[str, Any], retries: int,
                    adult_example: ExampleInfo, out: Path) -> None:
    job_id = job["id"]
    if retries:
        assert (job["status"], job["attempts"]) == ("succeeded", 2), job
        model = client.get(f"/v1/jobs/{job_id}/model", headers=auth())
        assert model.status_code == 200, model.text
        out.write_bytes(model.content)
        corrected = load_file(out)
        original = load_file(adult_example.out_dir / "model.safetensors")
        assert {k: tuple(v.shape) for k, v in corrected.items()} == \
            {k: tuple(v.shape) for k, v in original.items()}
        assert records.store.list_children(records.output_prefix("acme", job_id)) == \
            ["model.safetensors", "report.html", "report.json", "weights.parquet"]
    else:
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "worker_crashed", job
        assert "AbandonedJobError" in job["error"]["message"], job
        assert job["attempts"] == 1, job
        assert records.store.list_children(records.output_prefix("acme", job_id)) == []
    # exactly one publication: the job's directory holds the manifest and (on success) one output dir
    job_prefix = records.job_key("acme", job_id).rsplit("/", 1)[0]
    assert records.store.list_children(job_prefix) == (["job.json", "output"] if retries else ["job.json"])


@pytest.mark.slow
def test_killed_workers_never_leave_jobs_running(settings: ServiceSettings, adult_example: ExampleInfo,
                                                 tmp_path: Path) -> None:
    """Two jobs, one enqueued without retries and one with a retry, each on its own worker; both
    workers are killed whole at once (so the 61 s heartbeat expiry is waited out once)."""
    by_retries = {retries: settings.model_copy(update={"job_retries": retries}) for retries in (0, 1)}
    slow = settings.model_copy(update={"debug_stage_delay_s": STAGE_DELAY_S})
    records = Records(store_of(settings))
    redis = connect(settings)
    with contextlib.ExitStack() as stack:
        # One API reconciles (every 1 s); a second one, on the same store and queues, enqueues
        # without retries (RQ's Retry is fixed per job at enqueue).
        client = stack.enter_context(TestClient(create_app(by_retries[1], reconcile=True)))
        no_retry_client = stack.enter_context(TestClient(create_app(by_retries[0], reconcile=False)))
        ids = upload_example(client, adult_example)
        workers = [stack.enter_context(_worker(slow, tmp_path / f"worker-{i}.log")) for i in (1, 2)]
        job_ids: dict[int, str] = {}
        for retries, submitter in ((0, no_retry_client), (1, client)):
            response = submitter.post("/v1/jobs", headers=auth(), json=job_body(ids))
            assert response.status_code == 202, response.text
            job_ids[retries] = response.json()["id"]
        horses = [running_horse_pid(settings, job_id) for job_id in job_ids.values()]
        for horse in horses:
            assert horse not in [w.pid for w in workers] and os.getpgid(horse) == horse, \
                "expected RQ's horse in its own group"

        # kill -9 the whole workers: parents first (so they cannot notice their horses dying), then the horses
        for worker in workers:
            os.killpg(worker.pid, signal.SIGKILL)
        for horse in horses:
            os.killpg(horse, signal.SIGKILL)
        killed_at = time.monotonic()
        for worker in workers:
            worker.wait(timeout=10)
        for horse in horses:
            _wait_gone(horse)
        for job_id in job_ids.values():
            assert Job.fetch(job_id, connection=redis, serializer=JSONSerializer).get_status() == "started"
            record = records.get_job("acme", job_id)
            assert record is not None and (record.status, record.attempts) == ("running", 1), record

        # a healthy worker is available from now on (without the stage delay)
        stack.enter_context(_worker(settings, tmp_path / "worker-3.log"))
        for retries, job_id in job_ids.items():
            job, seen = _poll_terminal(client, job_id, killed_at + DEADLINE_S)
            print(f"retries={retries}: {job['status']} {time.monotonic() - killed_at:.1f} s after the kill; "
                  f"statuses {seen}")
            _assert_outcome(records, client, job, retries, adult_example, tmp_path / f"out-{retries}.st")
