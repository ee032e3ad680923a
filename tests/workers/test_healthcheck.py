"""``softunlearn worker-health`` against real worker processes on a private, password-protected Redis.

The worker and the health command get Redis the way docker-compose.yml gives it to them:
``REDIS_URL`` without a password plus ``SOFTUNLEARN_REDIS_PASSWORD`` holding one that a raw URL
could not carry (``@ : / # %`` and a space).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker
from rq.utils import now, utcformat
from rq.worker import BaseWorker

from tests.app.support import ROOT, make_settings, worker_env
from tests.private_redis import free_port, private_redis
from workers.demo import stop_process
from workers.healthcheck import MAX_HEARTBEAT_AGE_S, check_worker_health
from workers.settings import ServiceSettings

PASSWORD = "p@ss:w/rd#1 %41"
HEALTH_TIMEOUT_S = 60.0
"""Longest wait for a starting worker (it imports the engine) to register."""


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with private_redis(tmp_path_factory.mktemp("redis"), password=PASSWORD) as server:
        port = server.port
        yield port


@pytest.fixture
def settings(tmp_path: Path, redis_port: int) -> ServiceSettings:
    return make_settings(tmp_path / "store", f"h{uuid.uuid4().hex[:10]}",
                         redis_url=f"redis://127.0.0.1:{redis_port}/0", redis_password=PASSWORD)


def _env(settings: ServiceSettings, redis_port: int, **extra: str) -> dict[str, str]:
    redis_env = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "SOFTUNLEARN_REDIS_PASSWORD": PASSWORD}
    return worker_env(settings, **{**redis_env, **extra})


def _health(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "workers.cli.main", "worker-health", *args], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr)
    return result.returncode, lines[0]


def _wait_healthy(env: dict[str, str], worker: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        code, line = _health(env, "--queues", "cpu")
        if code == 0:
            return line
        assert worker.poll() is None, f"the worker exited: {log.read_text()[-2000:]}"
        assert line.startswith("unhealthy: no RQ worker is registered"), line
        assert time.monotonic() < deadline, f"never healthy: {line}; {log.read_text()[-2000:]}"
        time.sleep(0.2)


@contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", "worker", "--queues", "cpu"],
                                   env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop_process(process, timeout=20)


def _ours(settings: ServiceSettings) -> list[BaseWorker]:
    connection = Redis.from_url(settings.redis_url)
    return [w for w in Worker.all(connection=connection)
            if settings.queue_name("cpu") in w.queue_names()]


def test_unhealthy_when_no_worker_ever_ran(settings: ServiceSettings, redis_port: int) -> None:
    code, line = _health(_env(settings, redis_port), "--queues", "cpu")
    assert code == 1 and line == f"unhealthy: no RQ worker is registered from host {socket.gethostname()}"


def test_healthy_while_the_worker_runs_and_unhealthy_once_it_stopped(
        settings: ServiceSettings, redis_port: int, tmp_path: Path) -> None:
    env = _env(settings, redis_port)
    with _worker(env, tmp_path / "worker.log") as worker:
        line = _wait_healthy(env, worker, tmp_path / "worker.log")
        assert line.startswith("healthy: worker ") and f"pid {worker.pid}," in line, line
        assert settings.queue_name("cpu") in line, line
        assert _health(env)[0] == 0  # no --queues and no SOFTUNLEARN_WORKER_QUEUES: any of ours
        assert _health(_env(settings, redis_port, SOFTUNLEARN_WORKER_QUEUES="cpu"))[0] == 0

        code, line = _health(env, "--queues", "gpu")
        assert code == 1 and f"listens on {settings.queue_name('cpu')}, expected " \
                             f"{settings.queue_name('gpu')}" in line, line
        code, line = _health(_env(settings, redis_port, SOFTUNLEARN_QUEUE_PREFIX="elsewhere"))
        assert code == 1 and "listens on" in line, line  # another service's queues do not count

        connection = Redis.from_url(settings.redis_url)
        other_host = check_worker_health(connection, settings, ["cpu"], hostname="another-host")
        assert not other_host.healthy and "from host another-host" in other_host.reason

        (registered,) = _ours(settings)
        stale = now() - timedelta(seconds=MAX_HEARTBEAT_AGE_S + 30)
        connection.hset(registered.key, "last_heartbeat", utcformat(stale))
        code, line = _health(env, "--queues", "cpu")
        assert code == 1 and "last heartbeat" in line and f"(limit {MAX_HEARTBEAT_AGE_S} s)" in line, line
        connection.hset(registered.key, "last_heartbeat", utcformat(now()))
        assert _health(env, "--queues", "cpu")[0] == 0

        worker.terminate()
        assert worker.wait(timeout=20) == 0
    code, line = _health(env, "--queues", "cpu")
    assert code == 1 and "no RQ worker is registered" in line, line


def test_unhealthy_once_the_worker_was_killed(settings: ServiceSettings, redis_port: int,
                                              tmp_path: Path) -> None:
    env = _env(settings, redis_port)
    with _worker(env, tmp_path / "worker.log") as worker:
        _wait_healthy(env, worker, tmp_path / "worker.log")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        assert [w.pid for w in _ours(settings)] == [worker.pid]  # RQ still lists it (for ~8 min)
        code, line = _health(env, "--queues", "cpu")
    assert code == 1 and f"its process {worker.pid} is not running" in line, line


def test_redis_unreachable_is_healthy_but_degraded(settings: ServiceSettings) -> None:
    env = worker_env(settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, line = _health(env, "--queues", "cpu")
    assert code == 0 and line.startswith("healthy: degraded: Redis unreachable"), line


def test_a_wrong_password_is_unhealthy(settings: ServiceSettings, redis_port: int) -> None:
    code, line = _health(_env(settings, redis_port, SOFTUNLEARN_REDIS_PASSWORD="not-it"), "--queues", "cpu")
    assert code == 1 and "Redis refused the credentials" in line and "not-it" not in line, line
    code, line = _health(worker_env(settings, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0"))
    assert code == 1 and "Redis refused the credentials" in line, line


def test_bad_queues_or_settings_are_a_usage_error(settings: ServiceSettings, redis_port: int) -> None:
    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workers.cli.main", "worker-health", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=30)

    result = run(_env(settings, redis_port), "--queues", "tpu")
    assert result.returncode == 2 and "subset of gpu, cpu" in result.stdout
    two_passwords = _env(settings, redis_port, REDIS_URL=f"redis://:first-secret@127.0.0.1:{redis_port}/0")
    result = run(two_passwords)
    assert result.returncode == 2 and "set the password in one of them only" in result.stdout
    assert "first-secret" not in result.stdout + result.stderr and PASSWORD not in result.stdout
