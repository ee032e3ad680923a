"""Job lifecycle with real worker processes: cancel while running, SIGKILL of the work horse,
a job lost by Redis, and the reconciler that keeps manifests from staying ``running``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from app.main import create_app
from models_store import Records
from tests.app.support import (
    TestClient,
    auth,
    flush_test_db,
    job_body,
    running_horse_pid,
    store_of,
    upload_example,
    wait_for,
    worker_process,
)
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings

DELAY = {"debug_stage_delay_s": 0.7}


def outputs(settings: ServiceSettings, job_id: str) -> list[str]:
    records = Records(store_of(settings))
    return records.store.list_children(records.output_prefix("acme", job_id))


def submit(client: TestClient, ids: dict[str, str]) -> str:
    response = client.post("/v1/jobs", headers=auth(), json=job_body(ids))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_cancel_a_running_job(client: TestClient, settings: ServiceSettings, adult_example: ExampleInfo,
                              tmp_path: Path) -> None:
    ids = upload_example(client, adult_example)
    slow = settings.model_copy(update=DELAY)
    with worker_process(slow, tmp_path / "worker.log") as worker:
        job_id = submit(client, ids)
        running_horse_pid(settings, job_id)
        response = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth())
        assert response.status_code == 202 and response.json()["cancel_requested"]
        job = wait_for(client, job_id, ("canceled", "failed", "succeeded"), timeout=30)
        assert job["status"] == "canceled", job
        assert worker.poll() is None, "stopping a job must not stop the worker"
    assert outputs(settings, job_id) == []


@pytest.mark.parametrize("retries", [0, 1])
def test_sigkilled_work_horse_never_stays_running(settings: ServiceSettings,
                                                  adult_example: ExampleInfo, tmp_path: Path,
                                                  retries: int) -> None:
    slow = settings.model_copy(update={**DELAY, "job_retries": retries})
    with TestClient(create_app(slow, reconcile=False)) as client, \
            worker_process(slow, tmp_path / "worker.log"):
        job_id = submit(client, upload_example(client, adult_example))
        os.kill(running_horse_pid(settings, job_id), signal.SIGKILL)
        job = wait_for(client, job_id, ("failed", "succeeded", "canceled"), timeout=60)
    if retries:
        assert (job["status"], job["attempts"]) == ("succeeded", 2), job
        assert sorted(outputs(settings, job_id)) == ["model.safetensors", "report.html", "report.json",
                                                     "weights.parquet"]
    else:
        assert job["status"] == "failed" and job["error"]["code"] == "worker_crashed", job
        assert outputs(settings, job_id) == []


def test_job_lost_by_redis_is_requeued_and_finishes(client: TestClient, settings: ServiceSettings,
                                                    adult_example: ExampleInfo, tmp_path: Path) -> None:
    ids = upload_example(client, adult_example)
    job_id = submit(client, ids)
    flush_test_db()  # Redis restarted without persistence: the queue and the RQ job are gone
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "queued"
    record = Records(store_of(settings)).get_job("acme", job_id)
    assert record is not None and record.enqueues == 2
    with worker_process(settings, tmp_path / "worker.log"):
        job = wait_for(client, job_id, ("succeeded", "failed"), timeout=60)
    assert job["status"] == "succeeded", job
