"""Regressions from the property-based attack on the API: bad input is a 4xx naming what to
change, never a 500, and no answer quotes a server path."""

from __future__ import annotations

import re

import pytest

from tests.app.support import TestClient, auth

FAKE_IDS = {
    "model_id": "3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f",
    "train_dataset_id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "audit_dataset_id": "1b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e",
}
SERVER_PATH = re.compile(r"/tmp|/work|/root|/home|\.py\b|Traceback")


def _job(**sections: object) -> dict[str, object]:
    return {**FAKE_IDS, "objective": {"metric": "demographic_parity", "reduction": 0.9}, **sections}


@pytest.mark.parametrize(("sections", "field"), [
    # Found by schemathesis: an object where an integer goes reached `0 <= {} <= 20` (TypeError, 500).
    ({"guard": {"line_search_steps": {}}}, "guard.line_search_steps"),
    ({"method": {"epochs": "10"}}, "method.epochs"),
    ({"objective": {"metric": "robustness", "attack": {"steps": None}}}, "objective.attack.steps"),
    ({"influence": {"chunk_size": [8192]}}, "influence.chunk_size"),
    ({"evaluation": {"n_boot": {"a": 1}}}, "evaluation.n_boot"),
    # An integer past float's range made math.isfinite raise OverflowError (500).
    ({"objective": {"metric": "demographic_parity", "reduction": 10 ** 400}}, "objective.reduction"),
    ({"evaluation": {"frontier": {"reductions": [10 ** 400]}}}, "evaluation.frontier.reductions"),
])
def test_wrong_types_in_the_spec_are_422_naming_the_field(client: TestClient, sections: dict[str, object],
                                                         field: str) -> None:
    response = client.post("/v1/jobs", headers=auth(), json=_job(**sections))
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in [error["field"] for error in body["errors"]], body
    assert not SERVER_PATH.search(response.text)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("OPTIONS", "/v1/datasets/x", "DELETE, GET"),
    ("PUT", "/v1/models/x", "DELETE, GET"),
    ("PATCH", "/v1/jobs/x", "DELETE, GET"),
    ("GET", "/v1/jobs/x/cancel", "POST"),
    ("DELETE", "/v1/jobs", "GET, POST"),
])
def test_405_lists_every_method_of_the_path(client: TestClient, method: str, path: str, allowed: str) -> None:
    """Starlette named only the first route's methods, though GET and DELETE share a path."""
    response = client.request(method, path, headers=auth())
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert allowed in response.json()["detail"]


def test_a_body_that_is_not_utf8_is_400_saying_what_to_send(client: TestClient) -> None:
    response = client.post("/v1/jobs", headers={**auth(), "Content-Type": "application/json"},
                           content=b"\x059\xff\xfe")
    assert response.status_code in (400, 422), response.text
    assert "There was an error" not in response.json()["detail"]


def _spec_leaves(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    leaves: list[tuple[str, ...]] = []
    for item in fields(cls):
        kind = get_type_hints(cls)[item.name]
        nested = isinstance(kind, type) and is_dataclass(kind)
        leaves += _spec_leaves(kind, (*prefix, item.name)) if nested else [(*prefix, item.name)]
    return leaves


def test_every_spec_field_with_every_wrong_json_type_is_4xx(client: TestClient) -> None:
    """The deterministic core of the attack: each leaf of the spec set to each JSON type in turn
    (and to numbers no float holds) is refused or accepted, never a 500."""
    from workers.engine.config import CorrectionSpec

    statuses: dict[int, int] = {}
    for path in _spec_leaves(CorrectionSpec):
        for value in ("x", [1], {"a": 1}, None, True, 10 ** 400, -(2 ** 63)):
            body: dict[str, object] = _job(queue="cpu")
            tree = body
            for key in path[:-1]:
                tree = tree.setdefault(key, {})  # type: ignore[assignment]
            tree[path[-1]] = value
            response = client.post("/v1/jobs", headers=auth(), json=body)
            assert response.status_code < 500, (path, value, response.text)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(422, 0) > 300, statuses  # the fake ids: nothing valid is ever enqueued
