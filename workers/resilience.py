"""Workers that outlive Redis outages (torch-free).

RQ's :class:`~rq.Worker` quits on the first Redis error outside its dequeue loop: a heartbeat
while a horse runs (``HorseMonitorTimeoutException`` → ``ConnectionError`` → "quitting"), its
state writes, its birth and death records. Redis is only the transport here (the manifest in the
store is the record of truth), so a worker should sit an outage out instead:

* :class:`ResilientWorker` tolerates failed heartbeats while a horse runs (the horse keeps
  working; it needs the store, not Redis), waits with backoff for Redis before RQ's own
  bookkeeping in the horse (start, result, failure), and waits instead of dying when idle;
* :func:`supervise` runs ``work()`` and, when it still ends on a Redis error, waits for Redis and
  starts a new worker of the same name: no human action, whatever RQ code path failed.

SIGTERM and SIGINT keep RQ's meaning (warm shutdown, a second one cold) and end every wait at
once. :class:`OutageLog` keeps the noise bounded: one WARNING when an outage starts, then at most
one line per minute, one INFO when Redis answers again.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import redis.exceptions
from redis import Redis
from rq import Worker, worker_registration
from rq.exceptions import StopRequested

__all__ = ["REDIS_ERRORS", "Backoff", "OutageLog", "ResilientWorker", "supervise"]

REDIS_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
"""Errors meaning "Redis is unreachable or stalled" (``BusyLoadingError`` is a ``ConnectionError``)."""
STILL_DOWN_LOG_INTERVAL_S = 60.0
"""During an outage, at most one "still unreachable" line this often."""
PUBSUB_RETRY_S = 2.0
"""Wait of the command channel's thread between reconnection attempts (RQ's own)."""
PUBSUB_POLL_S = 0.25
"""Longest wait of the command channel's thread for a message or a subscription, hence for a
stop to reach it (RQ's is 60 s)."""
_SLICE_S = 0.2
"""Waits sleep in slices this long so that a stop request ends them promptly."""
log = logging.getLogger("rq.worker")  # the worker's own logger: RQ gives it the worker's handlers
T = TypeVar("T")


IDLE_HEARTBEAT_S = 10
"""Longest blocking dequeue of an idle worker, hence its heartbeat period (RQ's is
``worker_ttl - 15``)."""

class Backoff:
    """Exponential backoff with jitter: ``min_s``, doubling up to ``max_s``, each delay drawn from
    its upper half so that workers which lost Redis together do not retry in step."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max(max_s, min_s)
        self._step = min_s

    def reset(self) -> None:
        """Start again from ``min_s`` (Redis answered)."""
        self._step = self.min_s

    def next_delay(self) -> float:
        """The next delay in seconds."""
        delay = self._step * random.uniform(0.5, 1.0)
        self._step = min(self._step * 2, self.max_s)
        return delay


class OutageLog:
    """Outage state of one process and its bounded log lines."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.since: float | None = None
        self.failures = 0
        self._last_line = 0.0

    @property
    def down(self) -> bool:
        """Whether the last Redis call of this process failed."""
        return self.since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        """Note a failed Redis call; logs when an outage starts and at most once a minute after."""
        now = time.monotonic()
        self.failures += 1
        if self.since is None:
            self.since, self._last_line = now, now
            log.warning("Redis unreachable while %s (%s: %s); retrying with backoff up to %.0f s, a "
                        "running job goes on", doing, type(exc).__name__, exc, self.backoff.max_s,
                        extra={"event": "redis_unavailable"})
        elif now - self._last_line >= STILL_DOWN_LOG_INTERVAL_S:
            self._last_line = now
            log.warning("Redis still unreachable after %.0f s (%d failed calls; last: %s)",
                        now - self.since, self.failures, exc, extra={"event": "redis_unavailable"})

    def recovered(self) -> None:
        """Note a Redis call that worked; logs once when an outage ends."""
        if self.since is not None:
            log.info("Redis reachable again after %.1f s (%d failed calls); resuming",
                     time.monotonic() - self.since, self.failures, extra={"event": "redis_recovered"})
        self.since, self.failures = None, 0
        self.backoff.reset()

    def pause(self, should_stop: Callable[[], bool]) -> bool:
        """Sleep one backoff step; returns False at once when ``should_stop()`` turns true."""
        deadline = time.monotonic() + self.backoff.next_delay()
        while time.monotonic() < deadline:
            if should_stop():
                return False
            time.sleep(min(_SLICE_S, max(deadline - time.monotonic(), 0.0)))
        return not should_stop()


class ResilientWorker(Worker):
    """An RQ worker that sits Redis outages out instead of quitting (see the module docstring).

    ``on_horse_reaped(job, horse_pid)`` runs in the worker after each horse has exited, whatever
    Redis does (used to release the job's lease in the store); ``before_fork()`` runs in the
    worker before each horse is forked (used to import the engine once, on the first job).
    """

    def __init__(self, *args: Any, outage: OutageLog,
                 on_horse_reaped: Callable[[Any, int], None] | None = None,
                 before_fork: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = outage
        self.on_horse_reaped = on_horse_reaped
        self.before_fork = before_fork
        self.redis_failure: BaseException | None = None
        """The Redis error that ended :meth:`work`, if one did."""
        self.loop_error: BaseException | None = None
        """Another error that ended :meth:`work` (RQ logs it and quits)."""
        self.stop_signaled = False

    # --- stop requests ---------------------------------------------------------------------
    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """RQ's warm shutdown, remembered so that the supervisor does not restart the worker."""
        self.stop_signaled = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def _stopping(self) -> bool:
        return self.stop_signaled or bool(self._stop_requested)

    def set_shutdown_requested_date(self) -> None:
        """Best effort: it runs inside the signal handler, where a Redis error would escape into
        whatever the worker was doing (monitoring a horse)."""
        try:
            super().set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            self.outage.failed(exc, "recording a shutdown request")

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """The command channel's thread: RQ logs an ERROR at each of its retries (every 2 s of an
        outage); this one retries as often, logging through :class:`OutageLog` (redis-py
        resubscribes by itself once a retry connects)."""
        if not isinstance(exc, REDIS_ERRORS):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)
            return
        self.outage.failed(exc, "listening for commands")
        time.sleep(PUBSUB_RETRY_S)

    def subscribe(self) -> None:
        """RQ's subscription to the worker's command channel, its thread polling every
        :data:`PUBSUB_POLL_S` instead of RQ's 60 s: once unsubscribed, redis-py's thread waits
        its whole poll for a subscription before it sees the stop, RQ's join gives up after 1 s,
        and closing the channel then waited for the thread: a burst worker took a minute to exit
        (seen in the test suite)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ annotates it None
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler)

    # --- the idle loop ---------------------------------------------------------------------
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat; on a Redis error it waits for Redis when idle, and only notes the
        failure while a horse runs (monitoring it must go on)."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        while True:
            try:
                super().heartbeat(timeout)
            except REDIS_ERRORS as exc:
                self.outage.failed(exc, "sending the worker heartbeat")
                if self._horse_pid or self.is_horse or self._stopping():
                    return
                if not self.outage.pause(self._stopping):
                    return
                continue
            self.outage.recovered()
            self._ensure_registered()
            return

    def _ensure_registered(self) -> None:
        """Write this worker's registration again if Redis lost it (it restarted empty): else the
        worker would go on taking jobs while ``Worker.all`` (health check, ``no_worker``) misses it."""
        try:
            # RQ's busy heartbeat recreates a lost hash but not the registry entries Worker.all reads.
            if self.connection.sismember(self.redis_workers_keys, self.key):
                return
            with self.connection.pipeline() as pipeline:
                pipeline.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, pipeline)
                pipeline.expire(self.key, self.worker_ttl + 60)
                pipeline.execute()
        except REDIS_ERRORS as exc:
            self.outage.failed(exc, "registering the worker again")
            return
        log.info("worker %s registered again: Redis had lost its registration", self.name)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's suspension check, noting a Redis error for the supervisor."""
        self._noting(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        """RQ's registry cleanup, noting a Redis error for the supervisor."""
        self._noting(super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue (it retries Redis errors itself), noting one that escapes. An idle worker
        blocks at most :data:`IDLE_HEARTBEAT_S` at a time, so after Redis comes back empty its
        next heartbeat, which registers it again, is never far off."""
        if timeout is not None:
            timeout = min(timeout, IDLE_HEARTBEAT_S)
        return self._noting(super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    def execute_job(self, job: Any, queue: Any) -> None:
        """Fork a horse and monitor it; a Redis error escaping (after the horse ended) is noted."""
        self._noting(super().execute_job, job, queue)

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        """RQ's fork, after the ``before_fork`` hook."""
        if self.before_fork is not None:
            self.before_fork()
        super().fork_work_horse(job, queue)

    def _noting(self, call: Callable[..., T], *args: Any) -> T:
        try:
            result = call(*args)
        except StopRequested:
            raise
        except REDIS_ERRORS as exc:
            self.redis_failure = exc
            self.outage.failed(exc, "running the worker loop")
            raise
        except Exception as exc:
            self.loop_error = exc
            raise
        return result

    # --- while a horse runs ----------------------------------------------------------------
    def maintain_heartbeats(self, job: Any, execution: Any) -> None:
        """Heartbeats of a running job: a Redis error leaves the horse running (next try one
        monitoring period later)."""
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_ERRORS as exc:
            self.outage.failed(exc, "sending the heartbeat of a running job")
            return
        self.outage.recovered()
        self._ensure_registered()

    def monitor_work_horse(self, job: Any, queue: Any, execution: Any) -> None:
        """RQ's monitor, never leaving while the horse lives: a Redis error from its bookkeeping
        before the horse exits resumes the monitoring; one after it (RQ's post-mortem) is raised
        only once the horse is reaped, and the reaped-horse hook runs in every case."""
        horse = int(self._horse_pid)
        try:
            while True:
                try:
                    super().monitor_work_horse(job, queue, execution)
                    return
                except REDIS_ERRORS as exc:
                    self.outage.failed(exc, "monitoring a running job")
                    if not self._horse_pid:
                        raise
        finally:
            if self.on_horse_reaped is not None and not self._horse_pid:
                try:
                    self.on_horse_reaped(job, horse)
                except Exception:
                    log.exception("could not release job %s after its horse %d exited", job.id, horse)

    # --- RQ bookkeeping inside the horse (and the parent's post-mortem) ------------------------
    def _until_redis(self, doing: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` retried until Redis answers: the job's own work does not need Redis, so its
        start and its end wait for it (bounded by the job timeout: the parent kills a horse past
        ``job_timeout + 60`` s). A stop request in the parent ends the wait with the error."""
        while True:
            try:
                result = call(*args, **kwargs)
            except REDIS_ERRORS as exc:
                self.outage.failed(exc, doing)
                if not self.outage.pause(lambda: not self.is_horse and self._stopping()):
                    raise
                continue
            self.outage.recovered()
            return result

    def prepare_execution(self, job: Any) -> Any:
        """RQ's execution record, made before forking the horse: waits for Redis (the job is
        already dequeued; quitting here would strand it in RQ's intermediate queue)."""
        return self._until_redis("starting a job", super().prepare_execution, job)

    def prepare_job_execution(self, job: Any, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's start-of-job bookkeeping, waiting for Redis (so an outage does not fail a job that
        never ran)."""
        self._until_redis("starting a job", super().prepare_job_execution, job,
                          remove_from_intermediate_queue)

    def handle_execution_ended(self, job: Any, queue: Any, heartbeat_ttl: int) -> None:
        """RQ's end-of-job heartbeat, waiting for Redis."""
        self._until_redis("ending a job", super().handle_execution_ended, job, queue, heartbeat_ttl)

    def handle_job_success(self, job: Any, queue: Any, started_job_registry: Any, execution: Any) -> None:
        """RQ's success bookkeeping, waiting for Redis (the manifest is already written)."""
        self._until_redis("recording a job's success", super().handle_job_success, job, queue,
                          started_job_registry, execution)

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        """RQ's failure bookkeeping (and ``Retry``), waiting for Redis."""
        self._until_redis("recording a job's failure", super().handle_job_failure, job, queue,
                          *args, **kwargs)

    # --- the end -----------------------------------------------------------------------------
    def register_death(self) -> None:
        """Best effort: a worker stopping during an outage still stops (its key expires)."""
        try:
            super().register_death()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            self.outage.failed(exc, "recording the worker's death")

    def teardown(self) -> None:
        """RQ's teardown, tolerating Redis errors (the pub/sub thread is stopped regardless)."""
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS as exc:
            self.outage.failed(exc, "stopping the worker")
            try:
                self.unsubscribe()  # type: ignore[no-untyped-call]
            except Exception:
                log.debug("pub/sub thread did not stop cleanly", exc_info=True)


class _StopSignals:
    """SIGTERM/SIGINT handlers for the supervisor's waits between workers."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        """Make the next SIGTERM or SIGINT end the waits."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _wait_for_redis(connection: Redis, outage: OutageLog, stop: _StopSignals) -> bool:
    """Ping until Redis answers (True) or a stop is requested (False)."""
    while not stop.requested:
        try:
            connection.ping()
        except REDIS_ERRORS as exc:
            outage.failed(exc, "waiting to start the worker again")
            if not outage.pause(lambda: stop.requested):
                return False
            continue
        outage.recovered()
        return True
    return False


def supervise(first: ResilientWorker, make_worker: Callable[[str], ResilientWorker], connection: Redis,
              outage: OutageLog, work: Callable[[ResilientWorker], object]) -> int:
    """Run ``work(worker)``, from ``first`` on, until it ends for a reason other than Redis.

    A stop request or a normal end (burst done) returns 0; an error other than Redis' returns 1
    (RQ has logged it); a Redis error waits for Redis (backoff, ended by SIGTERM or SIGINT) and
    goes on with ``make_worker(name)``, a new worker of the same name.
    """
    stop = _StopSignals()
    worker = first
    while True:
        try:
            work(worker)
        except StopRequested:  # SIGTERM while bootstrapping
            return 0
        except REDIS_ERRORS as exc:  # bootstrap (register_birth) with Redis down
            worker.redis_failure = exc
            outage.failed(exc, "starting the worker")
        if worker.stop_signaled or worker._stop_requested:
            return 0
        if worker.redis_failure is None:
            return 1 if worker.loop_error is not None else 0
        log.warning("worker %s stopped on a Redis error (%s); starting it again when Redis answers",
                    worker.name, worker.redis_failure)
        stop.install()
        if not _wait_for_redis(connection, outage, stop):
            return 0
        worker.register_death()  # frees the name if the outage kept its old registration alive
        worker = make_worker(worker.name)
