"""Job submission: 422 naming the field, idempotency, listing, cancel of a queued job, 409s,
and ``no_worker`` for a job on a queue that no worker listens on."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

from models_store.records import JobRecord, utcnow
from tests.app.support import KEY_B, TestClient, auth, job_body, upload_example
from workers.engine.examples.common import ExampleInfo
from workers.queue import get_queue
from workers.reconcile import reconcile_all
from workers.settings import ServiceSettings


@pytest.fixture
def ids(client: TestClient, adult_example: ExampleInfo) -> dict[str, str]:
    return upload_example(client, adult_example)


@pytest.mark.parametrize(("change", "field"), [
    ({"objective": {"metric": "fairness", "sensitive_attribute": "sex"}}, "objective.metric"),
    ({"objective": {"metric": "demographic_parity", "sensitive_attribute": "race"}},
     "objective.sensitive_attribute"),
    ({"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex", "reduction": 1.5}},
     "objective.reduction"),
    ({"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex", "reduction": 0}},
     "objective.reduction"),
    ({"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex", "colour": 1}}, "objective"),
    ({"method": {"name": "magic"}}, "method.name"),
    ({"method": {"name": "retrain_last_k", "layers": 7}}, "method.layers"),
    ({"method": {"name": "finetune", "learning_rate": -0.01}}, "method.learning_rate"),
    ({"method": {"name": "refit"}, "influence": {"scope": "full"}}, "method"),
    ({"model_id": "not-an-id"}, "model_id"),
])
def test_bad_spec_is_422_naming_the_field(client: TestClient, ids: dict[str, str],
                                          change: dict[str, object], field: str) -> None:
    response = client.post("/v1/jobs", headers=auth(), json=job_body(ids, **change))
    assert response.status_code == 422, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in body["errors"]], body


@pytest.mark.parametrize(("change", "field", "cap"), [
    ({"method": {"name": "finetune", "epochs": 10_000}}, "method.epochs", "100"),
    ({"influence": {"lissa_depth": 1_000_000, "solver": "lissa", "scope": "full"}}, "influence.lissa_depth",
     "10000"),
    ({"influence": {"max_memory_gb": 1e9}}, "influence.max_memory_gb", "8"),
    ({"objective": {"metric": "robustness", "sensitive_attribute": "sex", "attack": {"steps": 1000}}},
     "objective.attack.steps", "100"),
    ({"evaluation": {"attack": {"steps": 1000}}}, "evaluation.attack.steps", "100"),
    ({"evaluation": {"n_boot": 100_000}}, "evaluation.n_boot", "10000"),
    ({"method": {"name": "newton", "max_iterations": 100}}, "method.max_iterations", "20"),
    ({"influence": {"lissa_batch_size": 1_000_000, "solver": "lissa", "scope": "full"}},
     "influence.lissa_batch_size", "8192"),
])
def test_knobs_past_the_operators_caps_are_422_naming_the_cap(client: TestClient, ids: dict[str, str],
                                                              change: dict[str, object], field: str,
                                                              cap: str) -> None:
    response = client.post("/v1/jobs", headers=auth(), json=job_body(ids, **change))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "limit_exceeded" and body["errors"][0]["field"] == field, body
    assert f"limit of {cap} " in body["detail"], body


def test_damping_must_be_finite_and_bounded(client: TestClient, ids: dict[str, str]) -> None:
    response = client.post("/v1/jobs", headers=auth(), json=job_body(ids, influence={"damping": 1e308}))
    assert response.status_code == 422 and "influence.damping" in response.text, response.text


def test_ids_of_another_kind_or_unknown_are_422(client: TestClient, ids: dict[str, str]) -> None:
    swapped = job_body(ids, train_dataset_id=ids["model_id"])
    body = client.post("/v1/jobs", headers=auth(), json=swapped).json()
    assert body["status"] == 422 and body["errors"][0]["field"] == "train_dataset_id"
    assert "is a model" in body["detail"]
    unknown = job_body(ids, model_id="3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f")
    body = client.post("/v1/jobs", headers=auth(), json=unknown).json()
    assert body["status"] == 422 and body["errors"][0]["field"] == "model_id"


def test_submit_get_list_cancel_and_idempotency(client: TestClient, ids: dict[str, str]) -> None:
    first = client.post("/v1/jobs", headers={**auth(), "Idempotency-Key": "k-1"}, json=job_body(ids))
    assert first.status_code == 202, first.text
    job = first.json()
    assert first.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["spec"]["weighting"]["scheme"] == "soft-2.3"
    again = client.post("/v1/jobs", headers={**auth(), "Idempotency-Key": "k-1"}, json=job_body(ids))
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    other = client.post("/v1/jobs", headers={**auth(), "Idempotency-Key": "k-1"}, json=job_body(ids, seed=3))
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
    second = client.post("/v1/jobs", headers=auth(), json=job_body(ids)).json()
    page = client.get("/v1/jobs", headers=auth(), params={"limit": 1}).json()
    assert page["total"] == 2 and page["next_offset"] == 1 and page["items"][0]["id"] == second["id"]
    assert client.get(f"/v1/jobs/{job['id']}/report", headers=auth()).json()["code"] == "job_not_succeeded"
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth()).json()["status"] == "canceled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth()).status_code == 409


def test_concurrent_posts_with_one_key_make_one_job_and_one_enqueue(client: TestClient, ids: dict[str, str],
                                                                     settings: ServiceSettings) -> None:
    body, headers = job_body(ids), {**auth(), "Idempotency-Key": "race-1"}
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/jobs", headers=headers, json=body), range(20)))
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses if r.status_code != 202]
    job_ids = {r.json()["id"] for r in responses}
    assert len(job_ids) == 1
    queue = f"rq:queue:{settings.queue_name('cpu')}"
    queued = Redis.from_url(settings.redis_url, decode_responses=True).lrange(queue, 0, -1)
    assert queued == list(job_ids)  # enqueued once
    assert client.get("/v1/jobs", headers=auth()).json()["total"] == 1


def test_listing_filters_by_status_and_pages_from_the_index(client: TestClient, ids: dict[str, str]) -> None:
    made = [client.post("/v1/jobs", headers=auth(), json=job_body(ids, seed=s)).json()["id"]
            for s in range(3)]
    client.post(f"/v1/jobs/{made[1]}/cancel", headers=auth())
    canceled = client.get("/v1/jobs", headers=auth(), params={"status": "canceled"}).json()
    assert [j["id"] for j in canceled["items"]] == [made[1]] and canceled["total"] == 1
    page = {"status": "queued", "limit": 1, "offset": 1}
    queued = client.get("/v1/jobs", headers=auth(), params=page).json()
    assert [j["id"] for j in queued["items"]] == [made[0]] and queued["next_offset"] is None
    assert client.get("/v1/jobs", headers=auth(KEY_B)).json()["total"] == 0


def _live_worker(connection: Redis, settings: ServiceSettings, kind: str) -> Worker:
    """An RQ worker registered on ``kind`` with a fresh heartbeat (it takes no job: it never works)."""
    worker = Worker([get_queue(connection, settings, kind)], connection=connection, serializer=JSONSerializer)
    worker.register_birth()  # type: ignore[no-untyped-call]
    return worker


def test_a_job_on_a_queue_without_workers_fails_as_no_worker(client: TestClient, ids: dict[str, str],
                                                             settings: ServiceSettings) -> None:
    connection = Redis.from_url(settings.redis_url)
    on_gpu = client.post("/v1/jobs", headers=auth(), json=job_body(ids, queue="gpu")).json()["id"]
    on_cpu = client.post("/v1/jobs", headers=auth(), json=job_body(ids, queue="cpu")).json()["id"]
    cpu_worker = _live_worker(connection, settings, "cpu")
    try:
        records = client.app.state.services.records  # type: ignore[attr-defined]
        now = settings.model_copy(update={"no_worker_wait_s": 0.0})
        assert reconcile_all(records, connection, now) == 1
    finally:
        cpu_worker.register_death()  # type: ignore[no-untyped-call]
    job = client.get(f"/v1/jobs/{on_gpu}", headers=auth()).json()
    assert (job["status"], job["error"]["code"]) == ("failed", "no_worker"), job
    message = job["error"]["message"]
    assert "'gpu' queue" in message and "softunlearn worker --queues gpu" in message and '"cpu"' in message
    assert connection.lrange(f"rq:queue:{settings.queue_name('gpu')}", 0, -1) == []  # no later run
    assert not connection.exists(f"rq:job:{on_gpu}")
    assert client.get(f"/v1/jobs/{on_cpu}", headers=auth()).json()["status"] == "queued"  # it has a worker


def test_no_worker_waits_for_the_job_and_for_the_queue_to_be_without_worker(
        client: TestClient, ids: dict[str, str], settings: ServiceSettings) -> None:
    connection = Redis.from_url(settings.redis_url)
    records = client.app.state.services.records  # type: ignore[attr-defined]
    patient = settings.model_copy(update={"no_worker_wait_s": 60.0})
    job_id = client.post("/v1/jobs", headers=auth(), json=job_body(ids, queue="gpu")).json()["id"]
    reconcile_all(records, connection, patient)
    assert records.get_job("acme", job_id).status == "queued"  # the job has not waited 60 s yet

    def enqueued_long_ago(record: JobRecord) -> JobRecord:
        record.enqueued_at = utcnow() - timedelta(minutes=10)
        return record

    records.update_job("acme", job_id, enqueued_long_ago)
    gpu_worker = _live_worker(connection, settings, "gpu")
    reconcile_all(records, connection, patient)
    assert records.get_job("acme", job_id).status == "queued"  # a live worker listens
    gpu_worker.register_death()  # type: ignore[no-untyped-call]
    reconcile_all(records, connection, patient)
    assert records.get_job("acme", job_id).status == "queued"  # it left seconds ago: may be restarting
    connection.set(f"{settings.queue_prefix}:worker-seen:gpu", repr(time.time() - 120))
    reconcile_all(records, connection, patient)
    assert records.get_job("acme", job_id).error.code == "no_worker"


@pytest.mark.parametrize("query", ["stat=failed", "limit=5&Status=failed", "=null"])
def test_an_unknown_query_parameter_of_the_listing_is_422_naming_it(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=auth())
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error" and "limit, offset, status" in body["detail"]
    assert [error["field"] for error in body["errors"]] == [query.split("&")[-1].split("=")[0]]
