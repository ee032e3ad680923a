"""Schemathesis against a live ``softunlearn serve`` (real Redis, a tenant's key, a real worker):
every operation of the served OpenAPI document, with generated valid and invalid requests, must
answer no 5xx and only statuses, content types, headers and bodies its document declares.

The Adult example is uploaded and corrected once, so besides the unknown ids that schemathesis
generates (404s), the id routes also get the real model, dataset and succeeded job: their 200
bodies (the report against its JSON Schema, the frontier, the Parquet weights, the checkpoint)
are checked too. Deletions run last, so they do not remove what the other routes read.

``positive_data_acceptance`` reads the statuses a schema-valid upload or job may still get from
``schemathesis.toml`` (bytes that are not a checkpoint, ids that name nothing: no schema can say
so).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.openapi import DEFAULT_PATH
from tests.app.support import (
    KEY_A,
    ROOT,
    auth,
    flush_test_db,
    job_body,
    make_settings,
    upload_example,
    worker_process,
)
from tests.faults.serving import Server, serve
from workers.engine.examples.common import ExampleInfo

EXAMPLES_PER_OPERATION = 10
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, ignored_auth, positive_data_acceptance, negative_data_rejection]
JOB_SECONDS = 120.0


def _operations() -> list[tuple[str, str]]:
    """Every (path, method) of the committed document (``test_contract`` keeps it the app's),
    deletions last."""
    paths = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))["paths"]
    operations = [(path, method.upper()) for path, item in paths.items() for method in item]
    return sorted(operations, key=lambda operation: operation[1] == "DELETE")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real API on the test Redis and a private store (rate limits off), with a real worker."""
    root = tmp_path_factory.mktemp("schemathesis")
    flush_test_db()
    settings_ = make_settings(root / "store", f"t{uuid.uuid4().hex[:10]}")
    # The worker first: its engine import overlaps the API's start.
    with worker_process(settings_, root / "worker.log"), serve(settings_, root / "serve.log") as running:
        yield running
    flush_test_db()


def _wait_succeeded(client: httpx.Client, job_id: str) -> None:
    for _ in range(int(JOB_SECONDS / 0.25)):
        status = client.get(f"/v1/jobs/{job_id}").json()["status"]
        if status == "succeeded":
            return
        assert status in ("queued", "running"), status
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not succeed within {JOB_SECONDS} s")


@pytest.fixture(scope="module")
def seeded(server: Server, adult_example: ExampleInfo) -> dict[str, str]:
    """Real objects: the Adult example uploaded, and one succeeded correction of it (one step, no
    frontier, few bootstrap resamples, no robust evaluation: a quick real job)."""
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=60) as client:
        ids = upload_example(client, adult_example)  # type: ignore[arg-type]
        body = job_body(ids, method={"name": "newton", "max_iterations": 1},
                        evaluation={"robustness": False, "n_boot": 100,
                                    "frontier": {"reductions": [], "k_fractions": []}})
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        _wait_succeeded(client, job_id)
    return {"model_id": ids["model_id"], "dataset_id": ids["train_dataset_id"], "job_id": job_id}


@pytest.fixture(scope="module")
def api_schema(server: Server) -> BaseSchema:
    """The document the live server serves, with the project's schemathesis settings."""
    config = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


@pytest.mark.timeout(300)  # the first one also builds the Adult example (a session fixture)
@pytest.mark.parametrize(("path", "method"), _operations())
def test_the_live_api_matches_its_openapi_document(api_schema: BaseSchema, server: Server,
                                                    seeded: dict[str, str], path: str, method: str) -> None:
    operation = api_schema[path][method]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE),
                  operation.as_strategy(GenerationMode.NEGATIVE)]
    real_ids = {name: value for name, value in seeded.items() if "{" + name + "}" in path}
    if real_ids:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real_ids))
    seen: list[int] = []

    @given(case=st.one_of(strategies))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(base_url=server.url, headers=auth(KEY_A), checks=CHECKS, timeout=30)
        seen.append(response.status_code)

    check()
    assert seen, "schemathesis generated no request"
    if real_ids and method == "GET":
        assert 200 in seen, f"the real ids never answered 200: {sorted(set(seen))}"
