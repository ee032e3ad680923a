"""The receiver process of the webhook tests and reading what it received."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.demo import stop_process
from workers.notify.signing import new_secret

__all__ = ["SECRET", "Receiver", "receiver"]

SECRET = new_secret()
"""Tenant acme's webhook secret in these tests."""


@dataclass
class Receiver:
    """A running receiver (tests/workers/notify/receiver.py)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT`` + ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, prefix: str = "") -> list[dict[str, Any]]:
        """The requests received so far whose path starts with ``prefix``, oldest first."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]
        return [e for e in entries if e["path"].startswith(prefix)]

    def wait_for(self, prefix: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``count`` requests under ``prefix`` arrived; returns them."""
        deadline = time.monotonic() + timeout
        while len(found := self.received(prefix)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} requests under {prefix} arrived: {found}")
            time.sleep(0.05)
        return found


@contextmanager
def receiver(log: Path, secret: str = SECRET, tls: tuple[Path, Path] | None = None) -> Iterator[Receiver]:
    """Start the receiver process (https with ``tls``: certificate and key files); stopped afterwards."""
    script = Path(__file__).with_name("receiver.py")
    extra = [str(p) for p in tls] if tls else []
    process = subprocess.Popen([sys.executable, str(script), secret, str(log), *extra],
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield Receiver(process, port, log)
    finally:
        stop_process(process, timeout=5)
