"""Threads per work horse: the count a real worker's horse runs a job with, and its default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.support import TestClient, auth, job_body, upload_example, wait_for, worker_process
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings
from workers.threads import available_cpus, resolve_threads

FORCED = 3
"""Neither torch's default on a 1-, 2- or 4-core machine nor what the default setting gives there."""
NO_FRONTIER: dict[str, list[float]] = {"reductions": [], "k_fractions": []}


def test_a_worker_runs_its_jobs_with_the_threads_setting(client: TestClient, settings: ServiceSettings,
                                                          adult_example: ExampleInfo, tmp_path: Path) -> None:
    ids = upload_example(client, adult_example)
    log = tmp_path / "worker.log"
    with worker_process(settings, log, SOFTUNLEARN_WORKER_THREADS=str(FORCED)):
        body = job_body(ids, evaluation={"robustness": False, "frontier": NO_FRONTIER})
        response = client.post("/v1/jobs", headers=auth(), json=body)
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], ("succeeded", "failed"), timeout=60)
    assert job["status"] == "succeeded", (job, log.read_text()[-2000:])
    assert job["threads"] == FORCED, job
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert [line["threads"] for line in lines if line["event"] == "worker_started"] == [FORCED]
    assert [line["threads"] for line in lines if line["event"] == "job_started"] == [FORCED]


def test_default_threads_share_the_cpus_between_the_workers_of_a_host() -> None:
    assert resolve_threads(None, 1, cpus=8) == 8
    assert resolve_threads(None, 2, cpus=8) == 4
    assert resolve_threads(None, 3, cpus=2) == 1
    assert resolve_threads(2, 4, cpus=8) == 2
    assert resolve_threads(0, 2, cpus=8) == 0


@pytest.mark.parametrize(("cpu_max", "cap"), [("max 100000\n", None), ("150000 100000\n", 2),
                                                ("50000 100000\n", 1), ("garbage", None)])
def test_available_cpus_respects_a_cgroup_quota(tmp_path: Path, cpu_max: str, cap: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    unlimited = available_cpus(tmp_path / "absent")
    assert available_cpus(path) == (unlimited if cap is None else min(cap, unlimited))
