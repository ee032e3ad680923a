"""20 simultaneous ``POST /v1/jobs`` bound to one ``Idempotency-Key``, with a real worker
listening: one job, enqueued once, executed once.

An outside attack once got one job enqueued up to 3 times and run by two workers at once; the
manifest is now created exclusively (``Records.create_job``), so only the request that created
it enqueues. This proves it end to end: the queue's list and RQ's registries hold the id once,
the manifest says one enqueue and one attempt, and the traced worker (see traced_worker.py)
recorded a single execution.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rq import Queue
from rq.registry import FinishedJobRegistry

from app.main import create_app
from models_store import Records
from tests.app.support import TestClient, auth, make_settings, store_of, upload_example, wait_for
from tests.faults.support import executions, quick_job, traced_workers, wait_listening
from tests.private_redis import private_redis
from workers.engine.examples.common import ExampleInfo

REQUESTS = 20


@pytest.mark.slow
@pytest.mark.redis
def test_one_key_twenty_racing_posts_one_execution(tmp_path: Path, adult_example: ExampleInfo) -> None:
    with private_redis(tmp_path / "redis", persistent=False) as server:
        settings = make_settings(tmp_path / "store", "idem", redis_url=server.url)
        redis = server.client()
        queue_key = f"rq:queue:{settings.queue_name('cpu')}"
        with TestClient(create_app(settings, reconcile=True)) as client, \
                traced_workers(settings, tmp_path, 2, OMP_NUM_THREADS="1"):
            ids = upload_example(client, adult_example)
            wait_listening(tmp_path, 2)
            pushes = redis.pubsub()  # type: ignore[no-untyped-call]
            redis.config_set("notify-keyspace-events", "Kl")  # every enqueue pushes the id: count them
            pushes.psubscribe(f"__keyspace@0__:{queue_key}")
            confirmation = pushes.get_message(timeout=5)
            assert confirmation is not None and confirmation["type"] == "psubscribe", confirmation
            body = quick_job(ids)
            headers = {**auth(), "Idempotency-Key": "racing-key-0001"}
            with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
                responses = list(pool.map(lambda _: client.post("/v1/jobs", headers=headers, json=body),
                                          range(REQUESTS)))
            assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
            job_ids = {r.json()["id"] for r in responses}
            assert len(job_ids) == 1, job_ids
            (job_id,) = job_ids

            job = wait_for(client, job_id, ("succeeded", "failed", "canceled"), timeout=60)
            assert (job["status"], job["attempts"]) == ("succeeded", 1), job
            events = []
            while (message := pushes.get_message(timeout=0.5)) is not None:
                if message["type"] == "pmessage":
                    events.append(message["data"])
            pushes.close()

        record = Records(store_of(settings)).get_job("acme", job_id)
        assert record is not None and (record.enqueues, record.attempts) == (1, 1), record
        assert [e for e in events if e in ("lpush", "rpush")] == ["rpush"], events
        assert redis.lrange(queue_key, 0, -1) == []
        queue = Queue(settings.queue_name("cpu"), connection=redis)
        assert FinishedJobRegistry(queue=queue).get_job_ids() == [job_id]
        runs = executions(tmp_path)
        assert [(run.job, run.end is not None) for run in runs] == [(job_id, True)], runs
        assert [job.id for job in Records(store_of(settings)).list_jobs("acme")] == [job_id]
