"""Helpers shared by the service tests: settings on a test Redis DB, uploads, job specs."""

from __future__ import annotations

import atexit
import functools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette 1.10 prefers httpx2 for its TestClient; httpx works the same (adding httpx2 to the
    # dev extras removes this guard's reason to exist).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from models_store import Records, Store, is_s3_location, open_store
from tests import s3_support
from workers.demo import stop_process
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings

__all__ = ["TestClient"]

TEST_REDIS_DB = 9
TEST_REDIS_DBS = tuple(range(9, 16))
"""Databases a test session may take (never DB 0), the preferred one first."""
SESSION_KEY = "softunlearn-tests:session"
"""Key in a test database naming the session that holds it; every flush renews its TTL."""
SESSION_TTL_S = 900
_SESSION_TOKEN = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
KEY_A = "tenant-a-key-0123456789abcdef"
KEY_B = "tenant-b-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def auth(key: str = KEY_A) -> dict[str, str]:
    """Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _holder_gone(value: bytes | str) -> bool:
    """Whether a session token names a process of this host that no longer runs."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    host, _, rest = text.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's session: only its TTL frees the database
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _release(url: str) -> None:
    try:
        connection = redis.Redis.from_url(url, socket_timeout=5)
        if connection.get(SESSION_KEY) == _SESSION_TOKEN.encode():
            connection.delete(SESSION_KEY)
    except redis.RedisError:
        pass


@functools.cache
def session_redis_url() -> str:
    """The Redis database of this test session, held against other sessions on the same Redis.

    Every test flushes its database (:func:`flush_test_db`), so two sessions on one database
    (CI jobs side by side, a developer's run during another) wipe each other's queues and jobs
    mid-test: a job then looks lost to the reconciler. A session therefore takes the first of
    DB 9–15 (``SOFTUNLEARN_TEST_REDIS_URL``'s first) that no live session holds, marking it with
    :data:`SESSION_KEY`. With Redis down, the preferred URL is returned unchecked.
    """
    base = os.environ.get("SOFTUNLEARN_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_REDIS_DB}")
    preferred = int(urlsplit(base).path.strip("/") or 0)
    candidates = [db for db in (preferred, *TEST_REDIS_DBS) if db != 0]
    for db in dict.fromkeys(candidates):
        url = _with_db(base, db)
        try:
            connection = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            taken = connection.set(SESSION_KEY, _SESSION_TOKEN, nx=True, ex=SESSION_TTL_S)
            if not taken:
                holder = connection.get(SESSION_KEY)
                if holder is None or _holder_gone(holder):
                    connection.set(SESSION_KEY, _SESSION_TOKEN, ex=SESSION_TTL_S)
                    taken = connection.get(SESSION_KEY) == _SESSION_TOKEN.encode()
        except redis.RedisError:
            return base
        if taken:
            atexit.register(_release, url)
            return url
    raise RuntimeError(f"Redis databases {candidates} are all held by other test sessions "
                       f"(key {SESSION_KEY!r}); wait for them or set SOFTUNLEARN_TEST_REDIS_URL")


@functools.cache
def shared_s3_server() -> s3_support.S3Server:
    """This session's S3 server (started on first use, stopped at exit)."""
    server = s3_support.start_s3_server()
    atexit.register(server.stop)
    return server


def make_settings(store: Path, prefix: str, **overrides: Any) -> ServiceSettings:
    """Settings on the test Redis DB, a private store and queue prefix. With
    ``SOFTUNLEARN_TEST_STORE=s3`` the store is a fresh prefix on this session's S3 server instead
    of the directory ``store``."""
    if s3_support.on_s3():
        store_location: Path | str = s3_support.s3_url()
        overrides.setdefault("s3_endpoint_url", shared_s3_server().endpoint)
    else:
        store_location = store
    values: dict[str, Any] = {
        "redis_url": overrides.get("redis_url") or session_redis_url(), "store": store_location,
        "api_keys": f"acme:{KEY_A},globex:{KEY_B}",
        "queue_prefix": prefix, "job_monitoring_interval_s": 1, "job_timeout_s": 120,
        "requeue_grace_s": 0.0, "reconcile_interval_s": 1.0,
        # Rate limits off unless a test is about them (suites send bursts of requests).
        "rate_requests_per_s": 0, "rate_uploads_per_min": 0, "rate_failed_auth_per_min": 0,
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
    if settings.s3_endpoint_url:
        env["SOFTUNLEARN_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    env.update(extra)
    return env


@contextmanager
def worker_process(settings: ServiceSettings, log: Path,
                   **extra_env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real forked RQ worker (``python -m workers.cli.main worker``), stopped afterwards;
    ``extra_env`` adds environment variables (e.g. settings ``worker_env`` does not pass)."""
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", "worker"],
                                   env=worker_env(settings, **extra_env), cwd=ROOT, stdout=handle,
                                   stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop_process(process, timeout=20)


def flush_test_db() -> None:
    """Empty this session's test database (never DB 0), keeping (and renewing) its hold on it."""
    connection = redis.Redis.from_url(session_redis_url())
    if connection.connection_pool.connection_kwargs.get("db", 0) == 0:
        raise RuntimeError("refusing to flush Redis DB 0")
    with connection.pipeline(transaction=True) as pipeline:  # no instant without the session key
        pipeline.flushdb()
        pipeline.set(SESSION_KEY, _SESSION_TOKEN, ex=SESSION_TTL_S)
        pipeline.execute()


def upload_example(client: TestClient, example: ExampleInfo, key: str = KEY_A) -> dict[str, str]:
    """Upload the example's model and three splits (Parquet, or tensor datasets); returns their ids."""
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
        path = next(d / f"{split}{suffix}" for suffix in (".parquet", ".safetensors")
                    if (d / f"{split}{suffix}").exists())
        with open(path, "rb") as handle:
            response = client.post("/v1/datasets", headers=auth(key), data={"schema": schema},
                                   files={"file": (path.name, handle)})
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


def store_of(settings: ServiceSettings) -> Store:
    """The store of ``settings``, as the API and the workers open it."""
    return open_store(settings.store, endpoint_url=settings.s3_endpoint_url)


def store_files(where: ServiceSettings | Path) -> list[str]:
    """Every file of the store (of settings, or a store root) except lock files, staging included
    (used to prove nothing partial is left): under the root directory, or the objects under the
    S3 prefix and the local S3 staging files (``.staging/NAME``)."""
    settings = where if isinstance(where, ServiceSettings) else None
    if settings is not None and is_s3_location(settings.store):
        from models_store.s3 import S3Store
        from models_store.s3.store import default_staging_dir

        store = store_of(settings)
        assert isinstance(store, S3Store)
        pages = store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.location.bucket, Prefix=store.location.object_name(""))
        names = [store.location.key_of(item["Key"]) for page in pages for item in page.get("Contents", [])]
        staging = [f".staging/{p.name}" for p in default_staging_dir().iterdir() if p.is_file()]
        return sorted(names + staging)
    root = Path(settings.store if settings is not None else where)  # type: ignore[arg-type]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".locks" not in p.parts)


def running_horse_pid(settings: ServiceSettings, job_id: str, timeout: float = 60.0) -> int:
    """The work horse's pid once tenant acme's job is running past its ``load`` stage."""
    records = Records(store_of(settings))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = records.get_job("acme", job_id)
        if record is not None and record.status == "running" and record.worker_pid and record.stage != "load":
            return record.worker_pid
        time.sleep(0.05)
    raise AssertionError("the job never started running")
