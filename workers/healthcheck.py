"""``softunlearn worker-health``: is a live RQ worker of this host registered and heartbeating?

A container healthcheck for ``softunlearn worker`` (torch-free, one Redis round trip or two).
Healthy when Redis holds the registration of an RQ worker whose hostname is this host's
(``socket.gethostname()``, the container id under Docker), whose process is alive here, whose last
heartbeat is recent and which listens on the expected queues of this service.

While Redis cannot be reached the answer is healthy, marked ``degraded``: the worker is alive
and retrying, and a restart would not bring Redis back (it would only kill a running job and
restart every worker of the fleet at once). A worker that dies ends its container anyway, since
it is the container's main process. Redis refusing the credentials is unhealthy: that is a
configuration error, not an outage.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import Worker
from rq.worker import BaseWorker

from workers.queue import QUEUE_KINDS, WORKER_TTL_S, parse_queue_kinds
from workers.settings import ServiceSettings

__all__ = ["MAX_HEARTBEAT_AGE_S", "HealthResult", "check_worker_health",
           "worker_health"]

MAX_HEARTBEAT_AGE_S = WORKER_TTL_S + 60
"""Oldest heartbeat still healthy, in seconds. An idle worker heartbeats once per blocking
dequeue (``workers.resilience.IDLE_HEARTBEAT_S``), a busy one every ``job_monitoring_interval``;
RQ itself deems a worker dead ``worker_ttl + 60`` s after its last heartbeat (``softunlearn worker`` runs with
``worker_ttl`` = :data:`workers.queue.WORKER_TTL_S`)."""
REDIS_TIMEOUT_S = 1.0
"""Connect and read timeout of the check's Redis calls (no retries), so it stays well under 5 s."""


@dataclass(frozen=True)
class HealthResult:
    """The verdict: ``healthy`` (exit 0) or not (exit 1), with a one-line reason."""

    healthy: bool
    reason: str

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 unhealthy (the Docker HEALTHCHECK convention)."""
        return 0 if self.healthy else 1

    def line(self) -> str:
        """The one line the command prints."""
        return f"{'healthy' if self.healthy else 'unhealthy'}: {self.reason}"


def _process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _heartbeat_age(worker: BaseWorker, now: datetime) -> float | None:
    last: datetime | None = worker.last_heartbeat
    return None if last is None else (now - last).total_seconds()


def _judge(worker: BaseWorker, expected: set[str] | None, service_queues: set[str],
           now: datetime) -> str | None:
    """Why this registration of our host is not a healthy worker of ours; None when it is."""
    queues = set(worker.queue_names())
    wanted = expected if expected is not None else service_queues
    if (expected is not None and queues != expected) or not queues <= service_queues:
        return (f"worker {worker.name} listens on {', '.join(sorted(queues)) or 'no queue'}, "
                f"expected {', '.join(sorted(wanted))}")
    if not _process_alive(worker.pid):
        return f"worker {worker.name} is registered but its process {worker.pid} is not running"
    age = _heartbeat_age(worker, now)
    if age is None:
        return f"worker {worker.name} has no heartbeat"
    if age > MAX_HEARTBEAT_AGE_S:
        return f"worker {worker.name} last heartbeat {age:.0f} s ago (limit {MAX_HEARTBEAT_AGE_S} s)"
    return None


def check_worker_health(connection: Redis, settings: ServiceSettings, kinds: list[str] | None,
                        hostname: str) -> HealthResult:
    """Judge the RQ workers registered from ``hostname``: healthy when one of them is.

    ``kinds`` are the queue kinds the worker must listen on exactly; None accepts any non-empty
    subset of this service's queues (``SOFTUNLEARN_QUEUE_PREFIX``).

    Raises:
        redis.exceptions.RedisError: Redis failed (the caller tells outages from refusals).
    """
    expected = {settings.queue_name(k) for k in kinds} if kinds is not None else None
    service_queues = {settings.queue_name(k) for k in QUEUE_KINDS}
    ours = [w for w in Worker.all(connection=connection) if w.hostname == hostname]
    if not ours:
        return HealthResult(False, f"no RQ worker is registered from host {hostname}")
    now = datetime.now(UTC)
    problems: list[str] = []
    for worker in ours:
        problem = _judge(worker, expected, service_queues, now)
        if problem is None:
            return HealthResult(True, f"worker {worker.name} (pid {worker.pid}, {worker.get_state()}) "
                                      f"on {', '.join(worker.queue_names())}, "
                                      f"heartbeat {_heartbeat_age(worker, now):.0f} s ago")
        problems.append(problem)
    return HealthResult(False, "; ".join(problems))


def _connect(settings: ServiceSettings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                          socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def worker_health(settings: ServiceSettings, queues: str | None = None,
                  hostname: str | None = None) -> HealthResult:
    """The healthcheck of ``softunlearn worker``: see the module docstring.

    ``queues`` (comma-separated kinds) defaults to ``SOFTUNLEARN_WORKER_QUEUES``; when neither is
    set, any queues of this service are accepted.

    Raises:
        ValueError: an unknown queue kind.
    """
    requested = queues or settings.worker_queues
    kinds = parse_queue_kinds(requested) if requested else None
    host = hostname or socket.gethostname()
    connection = _connect(settings)
    try:
        return check_worker_health(connection, settings, kinds, host)
    except (AuthenticationError, AuthorizationError) as exc:
        return HealthResult(False, f"Redis refused the credentials ({exc}); check REDIS_URL and "
                                   "SOFTUNLEARN_REDIS_PASSWORD")
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return HealthResult(True, f"degraded: Redis unreachable ({type(exc).__name__}); the worker "
                                  "retries, a restart would not help")
    except RedisError as exc:
        return HealthResult(False, f"Redis failed: {type(exc).__name__}: {exc}")
    finally:
        connection.close()
