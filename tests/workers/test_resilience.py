"""The resilient worker against a real Redis: a burst worker ends its command-channel thread
before it returns, so its process can exit at once."""

from __future__ import annotations

from redis import Redis
from rq.serializers import JSONSerializer

from workers.queue import get_queue
from workers.resilience import PUBSUB_POLL_S, Backoff, OutageLog, ResilientWorker
from workers.settings import ServiceSettings


def test_a_burst_worker_ends_its_command_thread_before_it_returns(settings: ServiceSettings) -> None:
    connection = Redis.from_url(settings.redis_url)
    worker = ResilientWorker([get_queue(connection, settings, "cpu")], connection=connection,
                             serializer=JSONSerializer, outage=OutageLog(Backoff(0.1, 1.0)))
    for _ in range(3):  # RQ's 60 s poll left the thread waiting in some of these (a race)
        worker.work(burst=True)
        thread = worker.pubsub_thread
        assert thread is not None and thread.sleep_time <= PUBSUB_POLL_S
        assert not thread.is_alive()
