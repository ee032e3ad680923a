"""A real ``softunlearn serve`` subprocess for fault tests, and raw-socket clients that misbehave."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.app.support import ROOT, worker_env
from tests.private_redis import free_port
from workers.demo import stop_process
from workers.settings import ServiceSettings

__all__ = ["Server", "raw_request", "read_status", "serve"]


@dataclass
class Server:
    """A running API process."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def rss_mb(self) -> float:
        """Resident memory of the API process in MiB."""
        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20

    def log_text(self) -> str:
        """What the process printed so far."""
        return self.log.read_text(errors="replace")


def _wait_up(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited: {server.log_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("serve did not come up")


@contextmanager
def serve(settings: ServiceSettings, log: Path, **env: str) -> Iterator[Server]:
    """``softunlearn serve`` on a free port with ``settings`` (plus ``SOFTUNLEARN_*`` overrides)."""
    port = free_port()
    limits = {f"SOFTUNLEARN_{name.upper()}": str(getattr(settings, name)) for name in
              ("rate_requests_per_s", "rate_uploads_per_min", "rate_failed_auth_per_min",
               "reconcile_interval_s", "requeue_grace_s")}
    environment = worker_env(settings, SOFTUNLEARN_API_KEYS=settings.api_keys, **{**limits, **env})
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=environment, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        server = Server(process, f"http://127.0.0.1:{port}", port, log)
        try:
            _wait_up(server)
            yield server
        finally:
            stop_process(process, timeout=15)


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Open a connection and send ``head`` (CRLF line ends added) and ``body``; left open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def read_status(sock: socket.socket) -> tuple[int, str]:
    """The status code and the whole response text (reads until the server closes or 64 KiB)."""
    data = b""
    while len(data) < 65536:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and _complete(data):
            break
    text = data.decode(errors="replace")
    return (int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0), text


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False
