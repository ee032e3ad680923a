"""Helpers shared by the service tests: settings on a test Redis DB, uploads, job specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette 1.10 prefers httpx2 for its TestClient; httpx works the same (adding httpx2 to the
    # dev extras removes this guard's reason to exist).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from models_store import LocalStore, Records
from workers.demo import stop_process
from workers.engine.examples import ExampleInfo
from workers.settings import ServiceSettings

__all__ = ["TestClient"]

TEST_REDIS_DB = 9
REDIS_URL = os.environ.get("SOFTUNLEARN_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_REDIS_DB}")
KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def auth(key: str = KEY_A) -> dict[str, str]:
    """Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def make_settings(store: Path, prefix: str, **overrides: Any) -> ServiceSettings:
    """Settings on the test Redis DB, a private store and queue prefix."""
    values: dict[str, Any] = {
        "redis_url": REDIS_URL, "store": store, "api_keys": f"acme:{KEY_A},globex:{KEY_B}",
        "queue_prefix": prefix, "job_monitoring_interval_s": 1, "job_timeout_s": 120,
        "requeue_grace_s": 0.0, "reconcile_interval_s": 1.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)


def worker_env(settings: ServiceSettings, **extra: str) -> dict[str, str]:
    """Environment for a ``softunlearn worker`` subprocess matching ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTUNLEARN_")}
    env.update({
        "REDIS_URL": settings.redis_url, "SOFTUNLEARN_STORE": str(settings.store),
        "SOFTUNLEARN_QUEUE_PREFIX": settings.queue_prefix,
        "SOFTUNLEARN_JOB_MONITORING_INTERVAL_S": str(settings.job_monitoring_interval_s),
        "SOFTUNLEARN_JOB_RETRIES": str(settings.job_retries),
        "SOFTUNLEARN_JOB_TIMEOUT_S": str(settings.job_timeout_s),
        "SOFTUNLEARN_DEBUG_STAGE_DELAY_S": str(settings.debug_stage_delay_s),
        "SOFTUNLEARN_DEVICE": "cpu",
    })
    env.update(extra)
    return env


@contextmanager
def worker_process(settings: ServiceSettings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real forked RQ worker (``python -m workers.cli.main worker``), stopped afterwards."""
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", "worker"],
                                   env=worker_env(settings), cwd=ROOT, stdout=handle,
                                   stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop_process(process, timeout=20)


def flush_test_db() -> None:
    """Empty the dedicated test database (never DB 0)."""
    connection = redis.Redis.from_url(REDIS_URL)
    if connection.connection_pool.connection_kwargs.get("db", 0) == 0:
        raise RuntimeError("refusing to flush Redis DB 0")
    connection.flushdb()


def upload_example(client: TestClient, example: ExampleInfo, key: str = KEY_A) -> dict[str, str]:
    """Upload the example's model and three splits; returns their ids."""
    d = example.out_dir
    arch = (d / "arch.json").read_text()
    schema = (d / "schema.json").read_text()
    ids: dict[str, str] = {}
    with open(d / "model.safetensors", "rb") as handle:
        response = client.post("/v1/models", headers=auth(key), data={"architecture": arch},
                               files={"file": ("model.safetensors", handle)})
    assert response.status_code == 201, response.text
    ids["model_id"] = response.json()["id"]
    for split in ("train", "audit", "eval"):
        with open(d / f"{split}.parquet", "rb") as handle:
            response = client.post("/v1/datasets", headers=auth(key), data={"schema": schema},
                                   files={"file": (f"{split}.parquet", handle)})
        assert response.status_code == 201, response.text
        ids[f"{split}_dataset_id"] = response.json()["id"]
    return ids


def job_body(ids: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """A demographic-parity job on the uploaded example (robust evaluation off: faster)."""
    body: dict[str, Any] = {
        **ids,
        "objective": {"metric": "demographic_parity", "sensitive_attribute": "sex", "reduction": 0.9,
                      "utility_tolerance": 0.0},
        "weighting": {"scheme": "soft-2.3"},
        "method": {"name": "newton"},
        "evaluation": {"robustness": False},
    }
    body.update(overrides)
    return body


def wait_for(client: TestClient, job_id: str, statuses: tuple[str, ...], timeout: float = 90.0,
             key: str = KEY_A) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job['status']} ({json.dumps(job)[:400]})")
        time.sleep(0.2)


def store_files(root: Path) -> list[str]:
    """Every file under the store root except lock files (used to prove nothing partial is left)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".locks" not in p.parts)


def running_horse_pid(store: Path, job_id: str, timeout: float = 60.0) -> int:
    """The work horse's pid once tenant acme's job is running past its ``load`` stage."""
    records = Records(LocalStore(store))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = records.get_job("acme", job_id)
        if record is not None and record.status == "running" and record.worker_pid and record.stage != "load":
            return record.worker_pid
        time.sleep(0.05)
    raise AssertionError("the job never started running")
