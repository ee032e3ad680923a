"""RQ plumbing shared by the API and the workers (torch-free).

Jobs are enqueued by dotted path with only ids as arguments, serialized as JSON (never pickle),
with an explicit ``job_timeout``, ``Retry`` for crashes of the work horse, and result TTLs. The RQ
job id equals the service's job id.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from workers.settings import ServiceSettings

__all__ = [
    "JOB_FUNCTION",
    "QUEUE_KINDS",
    "WORKER_TTL_S",
    "RQState",
    "cancel_rq_job",
    "cleanup_started_registries",
    "connect",
    "enqueue_correction",
    "get_queue",
    "parse_queue_kinds",
    "rq_state",
]

JOB_FUNCTION = "workers.jobs.run_correction_job"
"""Dotted path of the job function, so enqueuing never imports the engine."""
QUEUE_KINDS = ("gpu", "cpu")
WORKER_TTL_S = 60
"""RQ ``worker_ttl`` of our workers: a worker counts as gone ``WORKER_TTL_S + 60`` s after its
last heartbeat (an idle one heartbeats every ``workers.resilience.IDLE_HEARTBEAT_S``). RQ's
default, 420 s, hid a dead idle worker for 8 minutes from the health check and from ``no_worker``."""
SOCKET_TIMEOUT_S = 5.0
"""Redis socket timeout of API calls: a stalled Redis answers 503 rather than hanging."""


def parse_queue_kinds(requested: str) -> list[str]:
    """The queue kinds of a comma-separated ``gpu,cpu`` subset.

    Raises:
        ValueError: an unknown or empty queue list.
    """
    kinds = [k.strip() for k in requested.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in QUEUE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"queues must be a comma-separated subset of {', '.join(QUEUE_KINDS)}; "
                         f"got {requested!r}")
    return kinds


def connect(settings: ServiceSettings) -> Redis:
    """A Redis connection for ``settings.redis_url``."""
    return Redis.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT_S,
                          socket_connect_timeout=SOCKET_TIMEOUT_S, health_check_interval=30)


def get_queue(connection: Redis, settings: ServiceSettings, kind: str) -> Queue:
    """The RQ queue of ``kind`` (``cpu`` or ``gpu``), with the JSON serializer."""
    if kind not in QUEUE_KINDS:
        raise ValueError(f"queue must be one of {QUEUE_KINDS}; got {kind!r}")
    return Queue(settings.queue_name(kind), connection=connection, serializer=JSONSerializer)


def enqueue_correction(connection: Redis, settings: ServiceSettings, tenant: str, job_id: str,
                       kind: str) -> None:
    """Put a correction job on its queue (replacing any stale RQ job of the same id)."""
    retry = Retry(max=settings.job_retries) if settings.job_retries > 0 else None
    get_queue(connection, settings, kind).enqueue_call(
        JOB_FUNCTION,
        args=(tenant, job_id),
        job_id=job_id,
        timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        retry=retry,
        description=f"correction {job_id} of tenant {tenant}",
    )


@dataclass(frozen=True)
class RQState:
    """What RQ knows about a job: its status (None when RQ has no such job) and last error."""

    status: str | None
    error: str | None = None


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


def rq_state(connection: Redis, job_id: str) -> RQState:
    """RQ's view of ``job_id``."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        status = job.get_status(refresh=False)
    except (NoSuchJobError, InvalidJobOperation):
        return RQState(status=None)
    if status is None:
        return RQState(status=None)
    error = _last_line(job.exc_info) if status == "failed" else None
    return RQState(status=str(status.value if hasattr(status, "value") else status), error=error)


def cancel_rq_job(connection: Redis, job_id: str) -> None:
    """Take a queued job off its queue, or stop a running one (its horse is killed)."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return
    status = job.get_status(refresh=False)
    try:
        if status is not None and status.value == "started":
            from rq.command import send_stop_job_command

            send_stop_job_command(connection, job_id, serializer=JSONSerializer)
        elif status is not None and status.value in ("queued", "scheduled", "deferred"):
            job.cancel()
    except (InvalidJobOperation, NoSuchJobError):
        return


def cleanup_started_registries(connection: Redis, settings: ServiceSettings) -> None:
    """Let RQ fail (or retry) jobs whose worker died without a trace (heartbeat expired)."""
    for kind in QUEUE_KINDS:
        queue = get_queue(connection, settings, kind)
        StartedJobRegistry(queue=queue).cleanup()
