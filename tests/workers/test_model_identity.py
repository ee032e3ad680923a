"""Model identity through the service: a rebuild that does not reproduce the user's reference
logits fails the job (``invalid_input``), naming the activation that would; the right one succeeds.

Real Redis DB, a real forked ``softunlearn worker``, uploads through the API; the small synthetic
example (a few hundred rows, a Tanh MLP) keeps it fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models_store import Records
from tests.app.support import TestClient, auth, job_body, store_of, wait_for, worker_process
from tests.engine.small_data import SmallExample, write_small_example
from workers.settings import ServiceSettings

SCHEMA = {"label": "good", "sensitive": ["age_group"], "reference_logits": "reference_logits"}
OBJECTIVE = {"metric": "demographic_parity", "sensitive_attribute": "age_group", "reduction": 0.9,
             "utility_tolerance": 0.0}
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def tanh_example(tmp_path_factory: pytest.TempPathFactory) -> SmallExample:
    """A Tanh MLP and its splits, each holding the model's own logits in ``reference_logits``."""
    return write_small_example(tmp_path_factory.mktemp("identity") / "tanh", activation="tanh",
                               reference_logits=True)


def _arch(example: SmallExample, **changes: object) -> dict[str, Any]:
    arch: dict[str, Any] = {**json.loads((example.root / "arch.json").read_text()), **changes}
    return arch


def _post_dataset(client: TestClient, path: Path, schema: dict[str, Any]) -> Any:
    with open(path, "rb") as handle:
        return client.post("/v1/datasets", headers=auth(), data={"schema": json.dumps(schema)},
                           files={"file": (path.name, handle)})


def _upload(client: TestClient, example: SmallExample, arch: dict[str, Any]) -> dict[str, str]:
    """Upload the checkpoint with ``arch`` and the three splits with a schema naming reference_logits."""
    with open(example.root / "model.safetensors", "rb") as handle:
        response = client.post("/v1/models", headers=auth(), data={"architecture": json.dumps(arch)},
                               files={"file": ("model.safetensors", handle)})
    assert response.status_code == 201, response.text
    ids = {"model_id": response.json()["id"]}
    for split in ("train", "audit", "eval"):
        response = _post_dataset(client, example.root / f"{split}.parquet", SCHEMA)
        assert response.status_code == 201, response.text
        ids[f"{split}_dataset_id"] = response.json()["id"]
    return ids


def _submit(client: TestClient, ids: dict[str, str]) -> str:
    response = client.post("/v1/jobs", headers=auth(), json=job_body(ids, objective=OBJECTIVE))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_dataset_upload_accepts_reference_logits_and_names_a_missing_column(
        client: TestClient, tanh_example: SmallExample) -> None:
    train = tanh_example.root / "train.parquet"
    response = _post_dataset(client, train, SCHEMA)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["schema"]["reference_logits"] == "reference_logits", body
    assert "reference_logits" not in body["feature_names"] and len(body["feature_names"]) == 10, body

    response = _post_dataset(client, train, {**SCHEMA, "reference_logits": "my_model_logits"})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_dataset", problem
    assert "my_model_logits" in problem["detail"], problem
    assert [e["field"] for e in problem["errors"]] == ["file"], problem


def test_a_wrong_activation_fails_the_job_naming_the_one_that_matches(
        client: TestClient, settings: ServiceSettings, tanh_example: SmallExample, tmp_path: Path) -> None:
    wrong = _upload(client, tanh_example, _arch(tanh_example, activation="relu"))
    right = _upload(client, tanh_example, _arch(tanh_example))
    assert _arch(tanh_example)["activation"] == "tanh"
    log = tmp_path / "worker.log"
    with worker_process(settings, log):
        refused_id = _submit(client, wrong)
        refused = wait_for(client, refused_id, TERMINAL, timeout=120)
        accepted_id = _submit(client, right)
        accepted = wait_for(client, accepted_id, TERMINAL, timeout=120)

    assert refused["status"] == "failed", (refused, log.read_text()[-3000:])
    assert refused["error"]["code"] == "invalid_input", refused
    message: str = refused["error"]["message"]
    assert "does not reproduce the reference logits" in message, message
    assert "match activation 'tanh'" in message and "'relu'" in message, message
    assert "/tmp" not in message and str(settings.store) not in message and \
        str(tanh_example.root) not in message, message
    assert refused["attempts"] == 1 and "model" not in refused["links"], refused  # engine errors: no retry
    for output in ("model", "report", "report.html", "frontier", "weights"):
        response = client.get(f"/v1/jobs/{refused_id}/{output}", headers=auth())
        assert response.status_code in (404, 409), (output, response.status_code, response.text)
        assert response.json()["code"] == "job_not_succeeded", response.text
    records = Records(store_of(settings))
    assert records.store.list_children(records.output_prefix("acme", refused_id)) == []

    # the same checkpoint and datasets with the architecture it was built with are corrected
    assert accepted["status"] == "succeeded", (accepted, log.read_text()[-3000:])
    assert client.get(f"/v1/jobs/{accepted_id}/model", headers=auth()).status_code == 200
    report = client.get(f"/v1/jobs/{accepted_id}/report", headers=auth())
    assert report.status_code == 200, report.text
