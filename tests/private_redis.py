"""A private ``redis-server`` for a test: its own port and directory, optionally a password."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.retry import Retry

from workers.demo import stop_process


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def private_redis(workdir: Path, password: str | None = None) -> Iterator[int]:
    """Start ``redis-server`` on a free port (``--requirepass password`` when given); yield the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh and scripts/ensure-redis.sh install it)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]
    if password is not None:
        args += ["--requirepass", password]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1,
                      retry=Retry(NoBackoff(), 0))  # poll here, not in redis-py's backoff
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except AuthenticationError:
                break  # it answers, and asks for the password
            except RedisError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        stop_process(process, timeout=10)
