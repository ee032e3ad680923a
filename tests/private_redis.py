"""A private ``redis-server`` for a test: its own port and directory, optionally a password, and
killable and restartable on the same port (AOF with fsync on every write, so a kill loses
nothing, or no persistence, so it comes back empty)."""

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

__all__ = ["PrivateRedis", "free_port", "private_redis"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """One test's ``redis-server``: :meth:`start`, :meth:`kill`, :meth:`start` again."""

    def __init__(self, workdir: Path, persistent: bool = False, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (scripts/setup.sh and ensure-redis.sh install it)")
        self.binary, self.workdir = binary, workdir
        self.persistent, self.password = persistent, password
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Start the server and wait until it answers (its AOF loaded)."""
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                       else ["--appendonly", "no"])
        password = ["--requirepass", self.password] if self.password is not None else []
        with open(self.workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                 "--save", "", *persistence, *password], stdout=log, stderr=subprocess.STDOUT)
        probe = Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1,
                      retry=Retry(NoBackoff(), 0))  # poll here, not in redis-py's backoff
        deadline = time.monotonic() + 20
        while True:
            try:
                probe.ping()
                return
            except AuthenticationError:
                return  # it answers, and asks for the password
            except RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (an outage as abrupt as a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> Redis:
        """A client of the server (strings decoded)."""
        return Redis.from_url(self.url, socket_timeout=5, decode_responses=True, password=self.password)


@contextmanager
def private_redis(workdir: Path, persistent: bool = False,
                  password: str | None = None) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, killed at the end."""
    server = PrivateRedis(workdir, persistent, password)
    server.start()
    try:
        yield server
    finally:
        server.kill()
