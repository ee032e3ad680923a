"""Auth on every non-health route (generated from the app's routes) and tenant isolation."""

from __future__ import annotations

import re

import pytest

from app.main import create_app
from app.security import KeyRing, hash_key
from tests.app.support import KEY_B, TestClient, auth, job_body, upload_example
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings

PUBLIC = {"/healthz", "/readyz", "/metrics"}
FAKE_ID = "3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"


def app_routes(settings: ServiceSettings) -> list[tuple[str, str]]:
    """(method, path template) of every operation of the app (from the app's OpenAPI document)."""
    paths = create_app(settings, reconcile=False).openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def protected_routes(settings: ServiceSettings) -> list[tuple[str, str]]:
    return [(m, re.sub(r"\{[a-z_]+\}", FAKE_ID, p)) for m, p in app_routes(settings) if p not in PUBLIC]


def test_missing_or_wrong_key_is_401_everywhere(client: TestClient, settings: ServiceSettings) -> None:
    routes = protected_routes(settings)
    assert len(routes) >= 10
    for method, path in routes:
        wrong = {"Authorization": "Bearer wrong-key-0123456789"}
        for headers in ({}, wrong, {"Authorization": "Basic eDp5"}):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    for path in PUBLIC:
        assert client.get(path).status_code in (200, 503)


def test_another_tenants_ids_answer_404_like_unknown_ids(client: TestClient, settings: ServiceSettings,
                                                         adult_example: ExampleInfo) -> None:
    ids = upload_example(client, adult_example)
    job = client.post("/v1/jobs", headers=auth(), json=job_body(ids)).json()
    owned = {"model_id": ids["model_id"], "dataset_id": ids["train_dataset_id"], "job_id": job["id"]}
    id_routes = [(m, p) for m, p in app_routes(settings) if "{" in p]
    assert len(id_routes) >= 7
    for method, path in id_routes:
        name = re.findall(r"\{([a-z_]+)\}", path)[0]
        mine = path.replace("{" + name + "}", owned[name])
        foreign = client.request(method, mine, headers=auth(KEY_B))
        unknown = client.request(method, path.replace("{" + name + "}", FAKE_ID), headers=auth(KEY_B))
        assert foreign.status_code == unknown.status_code == 404, (path, foreign.text)
        assert {k: v for k, v in foreign.json().items() if k not in ("detail", "instance")} == \
            {k: v for k, v in unknown.json().items() if k not in ("detail", "instance")}
        assert client.request(method, mine, headers=auth()).status_code != 404 or name != "job_id"
    other_ids = {**ids, "model_id": ids["model_id"]}
    response = client.post("/v1/jobs", headers=auth(KEY_B), json=job_body(other_ids))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "model_id"
    assert client.get("/v1/jobs", headers=auth(KEY_B)).json()["total"] == 0
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth()).status_code == 200


def test_keyring_hashes_and_files(tmp_path: object) -> None:
    from pathlib import Path

    keys_file = Path(str(tmp_path)) / "keys"
    keys_file.write_text(f"# comment\nbeta:sha256:{hash_key('beta-secret-0123456789')}\n")
    ring = KeyRing.from_config("alpha:alpha-secret-0123456789", keys_file)
    assert ring.tenant_of("alpha-secret-0123456789") == "alpha"
    assert ring.tenant_of("beta-secret-0123456789") == "beta"
    assert ring.tenant_of("alpha-secret-012345678") is None
    with pytest.raises(ValueError, match="fewer than"):
        KeyRing.from_config("gamma:short", None)
    with pytest.raises(ValueError, match="tenant"):
        KeyRing.from_config("Bad Tenant:0123456789abcdef0123", None)
