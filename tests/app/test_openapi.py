"""The OpenAPI document says what the server does: readable unique operation ids, every error
status a route can answer (as problem+json), the report's JSON Schema, and 405 with ``Allow`` for
the methods a path lacks. (The committed copy is checked against the app in ``test_contract``;
schemathesis checks the live server against it in ``test_schemathesis``.)"""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.openapi import schema
from app.routes.contract import REPORT_REF
from app.routes.problems import PROBLEM_REF
from tests.app.support import TestClient, auth
from workers.reporting.schema import report_schema

DOCUMENT = schema()
OPERATIONS = [(path, method, operation) for path, item in DOCUMENT["paths"].items()
              for method, operation in item.items()]
CAMEL_CASE = re.compile(r"^[a-z]+(?:[A-Z][a-z0-9]*)*$")
EXPECTED_IDS = {
    ("post", "/v1/jobs"): "createJob", ("get", "/v1/jobs"): "listJobs",
    ("get", "/v1/jobs/{job_id}"): "getJob",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancelJob", ("delete", "/v1/jobs/{job_id}"): "deleteJob",
    ("get", "/v1/jobs/{job_id}/report"): "getJobReport", ("get", "/v1/jobs/{job_id}/model"): "getJobModel",
    ("post", "/v1/models"): "uploadModel", ("get", "/v1/models/{model_id}"): "getModel",
    ("post", "/v1/datasets"): "uploadDataset", ("get", "/v1/datasets/{dataset_id}"): "getDataset",
    ("get", "/healthz"): "getHealth",
}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def test_operation_ids_are_unique_readable_camel_case() -> None:
    ids = [operation["operationId"] for _, _, operation in OPERATIONS]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert all(CAMEL_CASE.match(operation_id) for operation_id in ids), ids
    for (method, path), expected in EXPECTED_IDS.items():
        assert DOCUMENT["paths"][path][method]["operationId"] == expected


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS,
                         ids=[operation["operationId"] for _, _, operation in OPERATIONS])
def test_every_error_a_route_can_answer_is_documented_as_problem_json(path: str, method: str,
                                                                      operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    expected = {"503"}  # the process's concurrency limit answers any request
    if path.startswith("/v1"):
        expected |= {"401", "429"}
    if "{" in path:
        expected.add("404")
    if "requestBody" in operation:
        expected |= {"400", "408", "413", "422"}
    assert expected <= responses.keys(), (path, method, sorted(responses))
    for code, response in responses.items():
        if int(code) >= 400:
            assert response["content"] == {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}


def test_the_document_uses_its_own_problem_schema_and_resolves_every_reference() -> None:
    components = DOCUMENT["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    for ref in _refs(DOCUMENT):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref


def test_the_report_route_returns_the_report_json_schema() -> None:
    content = DOCUMENT["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]["content"]
    assert content == {"application/json": {"schema": {"$ref": REPORT_REF}}}
    report = DOCUMENT["components"]["schemas"]["Report"]
    original = report_schema()
    assert "$id" not in report and "$defs" not in report
    assert report["required"] == original["required"]
    assert report["properties"].keys() == original["properties"].keys()
    for name in original["$defs"]:
        assert f"Report{name[:1].upper()}{name[1:]}" in DOCUMENT["components"]["schemas"]


_METHODS = ("get", "post", "delete", "put", "patch")


@pytest.mark.parametrize("path", list(DOCUMENT["paths"]))
def test_a_method_a_path_lacks_is_a_405_naming_the_ones_it_has(client: TestClient, path: str) -> None:
    declared = DOCUMENT["paths"][path]
    missing = next(method for method in _METHODS if method not in declared)
    concrete = re.sub(r"\{[^}]+\}", "3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f", path)
    response = client.request(missing.upper(), concrete, headers=auth())
    assert response.status_code == 405, (missing, path, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["allow"] == ", ".join(sorted(method.upper() for method in declared))


def test_links_lead_from_what_a_post_makes_to_the_operations_on_it() -> None:
    by_id = {operation["operationId"]: (path, operation) for path, _, operation in OPERATIONS}
    linked = set()
    for _, _, operation in OPERATIONS:
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                target_path, target = by_id[link["operationId"]]
                path_parameters = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                assert link["parameters"].keys() == path_parameters, (link, target_path)
                linked.add(link["operationId"])
    assert {"getJob", "getJobReport", "getModel", "getDataset", "deleteJob"} <= linked


def test_the_headers_the_api_sends_are_documented() -> None:
    created = DOCUMENT["paths"]["/v1/jobs"]["post"]["responses"]["202"]["headers"]
    assert created["Location"]["required"] is True
    for path, method, operation in OPERATIONS:
        for code in ("429", "503"):
            if code in operation["responses"]:
                assert "Retry-After" in operation["responses"][code]["headers"], (path, method, code)
