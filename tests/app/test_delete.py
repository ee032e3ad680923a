"""DELETE of models, datasets and jobs: 204, 404 without existence leaks, 409 while in use or not
finished, outputs and Idempotency-Key going with the job, metrics, the Python client."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from app.client import ApiProblem, SoftUnlearnClient
from models_store import Records
from tests.app.support import (
    KEY_B,
    TestClient,
    auth,
    job_body,
    store_files,
    store_of,
    upload_example,
    wait_for,
    worker_process,
)
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings

UNKNOWN = "3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"


@pytest.fixture
def ids(client: TestClient, adult_example: ExampleInfo) -> dict[str, str]:
    return upload_example(client, adult_example)


def submit(client: TestClient, ids: dict[str, str], key: str | None = None) -> str:
    headers = {**auth(), **({"Idempotency-Key": key} if key else {})}
    response = client.post("/v1/jobs", headers=headers, json=job_body(ids))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_an_artifact_is_deleted_once_and_only_by_its_tenant(client: TestClient, ids: dict[str, str],
                                                            settings: ServiceSettings) -> None:
    model, dataset = ids["model_id"], ids["eval_dataset_id"]
    for route in (f"/v1/models/{model}", f"/v1/datasets/{dataset}"):
        other = client.delete(route, headers=auth(KEY_B))
        assert (other.status_code, other.json()["code"]) == (404, "not_found")  # exactly like unknown
        assert client.get(route, headers=auth()).status_code == 200
    assert client.delete(f"/v1/models/{dataset}", headers=auth()).status_code == 404  # wrong kind
    assert client.delete(f"/v1/models/{UNKNOWN}", headers=auth()).status_code == 404
    assert client.delete("/v1/datasets/not-an-id", headers=auth()).status_code == 404
    assert client.delete(f"/v1/models/{model}").status_code == 401
    before = Records(store_of(settings)).tenant_usage("acme").stored_bytes
    for route in (f"/v1/models/{model}", f"/v1/datasets/{dataset}"):
        response = client.delete(route, headers=auth())
        assert response.status_code == 204 and response.content == b""
        assert client.get(route, headers=auth()).status_code == 404
        assert client.delete(route, headers=auth()).status_code == 404
    assert not [f for f in store_files(settings) if model in f or dataset in f]
    assert Records(store_of(settings)).tenant_usage("acme").stored_bytes < before
    metrics = client.get("/metrics").text
    assert 'softunlearn_deletions_total{kind="model",outcome="deleted"} 1.0' in metrics
    assert 'softunlearn_deletions_total{kind="model",outcome="not_found"} 4.0' in metrics


def test_in_use_and_unfinished_are_409_until_canceled(client: TestClient, ids: dict[str, str],
                                                      settings: ServiceSettings) -> None:
    job_id = submit(client, ids)
    for route in (f"/v1/models/{ids['model_id']}", f"/v1/datasets/{ids['audit_dataset_id']}"):
        response = client.delete(route, headers=auth())
        body = response.json()
        assert (response.status_code, body["code"]) == (409, "artifact_in_use"), body
        assert job_id in body["detail"] and body["job_ids"] == [job_id] and "cancel" in body["detail"]
    response = client.delete(f"/v1/jobs/{job_id}", headers=auth())
    body = response.json()
    assert (response.status_code, body["code"], body["job_status"]) == (409, "job_not_finished", "queued")
    assert f"/v1/jobs/{job_id}/cancel" in body["detail"]
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth(KEY_B)).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth()).json()["status"] == "canceled"
    assert client.delete(f"/v1/models/{ids['model_id']}", headers=auth()).status_code == 204
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=auth()).status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 404
    assert client.get("/v1/jobs", headers=auth()).json()["total"] == 0
    assert not [f for f in store_files(settings) if job_id in f]
    assert not Redis.from_url(settings.redis_url).exists(f"rq:job:{job_id}")
    metrics = client.get("/metrics").text
    assert 'softunlearn_deletions_total{kind="job",outcome="job_not_finished"} 1.0' in metrics
    assert 'softunlearn_deletions_total{kind="dataset",outcome="artifact_in_use"} 1.0' in metrics


def test_a_retried_post_after_delete_makes_a_new_job(client: TestClient, ids: dict[str, str]) -> None:
    first = submit(client, ids, key="nightly-1")
    assert submit(client, ids, key="nightly-1") == first
    client.post(f"/v1/jobs/{first}/cancel", headers=auth())
    assert client.delete(f"/v1/jobs/{first}", headers=auth()).status_code == 204
    second = submit(client, ids, key="nightly-1")
    assert second != first
    assert client.get(f"/v1/jobs/{first}", headers=auth()).status_code == 404  # not resurrected
    assert client.get(f"/v1/jobs/{second}", headers=auth()).json()["status"] == "queued"
    assert submit(client, ids, key="nightly-1") == second  # the key now names the new job


def test_a_delete_racing_a_retried_post_does_not_revive_the_job(client: TestClient, ids: dict[str, str],
                                                                settings: ServiceSettings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE lands between the retried POST's read of the key's binding and its create."""
    first = submit(client, ids, key="race-2")
    client.post(f"/v1/jobs/{first}/cancel", headers=auth())
    records: Records = client.app.state.services.records  # type: ignore[attr-defined]
    original = Records.create_job
    raced: list[str] = []

    def create_after_a_delete(self: Records, record: object) -> bool:
        if not raced:
            raced.append("deleted")
            assert client.delete(f"/v1/jobs/{first}", headers=auth()).status_code == 204
        return original(self, record)  # type: ignore[arg-type]

    monkeypatch.setattr(Records, "get_job", _missing_once(Records.get_job, first))
    monkeypatch.setattr(Records, "create_job", create_after_a_delete)
    second = submit(client, ids, key="race-2")
    assert raced and second != first
    assert records.get_job("acme", first) is None
    assert [j["id"] for j in client.get("/v1/jobs", headers=auth()).json()["items"]] == [second]


def _missing_once(get_job: object, job_id: str) -> object:
    """``Records.get_job`` answering None for ``job_id`` once: the POST saw the binding before the
    DELETE and the manifest after it."""
    seen: list[bool] = []

    def patched(self: Records, tenant: str, wanted: str) -> object:
        if wanted == job_id and not seen:
            seen.append(True)
            return None
        return get_job(self, tenant, wanted)  # type: ignore[operator]

    return patched


def test_a_finished_job_keeps_its_report_when_its_model_goes(
        client: TestClient, ids: dict[str, str], settings: ServiceSettings, tmp_path: Path) -> None:
    with worker_process(settings, tmp_path / "worker.log"):
        job_id = submit(client, ids)
        assert wait_for(client, job_id, ("succeeded", "failed"))["status"] == "succeeded"
    records = Records(store_of(settings))
    with_outputs = records.tenant_usage("acme").stored_bytes
    outputs = records.store.list_children(records.output_prefix("acme", job_id))
    assert "report.json" in outputs and "model.safetensors" in outputs
    sha = client.get(f"/v1/models/{ids['model_id']}", headers=auth()).json()["sha256"]
    assert client.delete(f"/v1/models/{ids['model_id']}", headers=auth()).status_code == 204
    report = client.get(f"/v1/jobs/{job_id}/report", headers=auth()).json()
    assert report["provenance"]["model_sha256"] == sha
    output_bytes = sum(records.store.size(records.output_key("acme", job_id, n)) for n in outputs)
    model_bytes = with_outputs - records.tenant_usage("acme").stored_bytes
    assert model_bytes > 0
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204
    assert records.tenant_usage("acme").stored_bytes == with_outputs - model_bytes - output_bytes
    assert client.get(f"/v1/jobs/{job_id}/report", headers=auth()).status_code == 404
    assert not [f for f in store_files(settings) if job_id in f]


def test_the_client_deletes(client: TestClient, ids: dict[str, str]) -> None:
    # The TestClient's transport drives the app in-process, as a real server would be driven.
    transport = client._transport  # type: ignore[attr-defined]
    with SoftUnlearnClient("http://testserver", "tenant-a-key-0123456789abcdef", transport=transport) as api:
        job_id = submit(client, ids)
        with pytest.raises(ApiProblem) as refused:
            api.delete_dataset(ids["train_dataset_id"])
        assert (refused.value.status, refused.value.code) == (409, "artifact_in_use")
        with pytest.raises(ApiProblem) as unfinished:
            api.delete_job(job_id)
        assert unfinished.value.code == "job_not_finished"
        api.cancel_job(job_id)
        assert [j["id"] for j in api.list_jobs(status="canceled")["items"]] == [job_id]
        api.delete_job(job_id)
        api.delete_dataset(ids["train_dataset_id"])
        api.delete_model(ids["model_id"])
        with pytest.raises(ApiProblem) as gone:
            api.delete_model(ids["model_id"])
        assert gone.value.status == 404
