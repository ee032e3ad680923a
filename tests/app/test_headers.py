"""Security headers on every response, no redirect that echoes the Host header, and ids matched
whole (a trailing newline, ``%0a``, is a 404 like any other unknown id, never a 500)."""

from __future__ import annotations

import uuid

import pytest

from tests.app.support import TestClient, auth

ID_ROUTES = (("GET", "/v1/jobs/{}"), ("POST", "/v1/jobs/{}/cancel"), ("GET", "/v1/jobs/{}/report"),
             ("GET", "/v1/jobs/{}/report.html"), ("GET", "/v1/jobs/{}/frontier"),
             ("GET", "/v1/jobs/{}/weights"), ("GET", "/v1/jobs/{}/model"), ("GET", "/v1/models/{}"),
             ("GET", "/v1/datasets/{}"))


@pytest.mark.parametrize(("method", "path", "authorized"), [
    ("GET", "/healthz", False), ("GET", "/metrics", False), ("GET", "/v1/jobs", True),
    ("GET", "/v1/jobs", False), ("GET", "/v1/jobs/3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f", True),
    ("GET", "/nowhere", False),
])
def test_every_response_carries_the_security_headers(client: TestClient, method: str, path: str,
                                                     authorized: bool) -> None:
    response = client.request(method, path, headers=auth() if authorized else {})
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    if path.startswith("/v1"):
        assert response.headers["cache-control"] == "no-store"
    assert "uvicorn" not in response.headers.get("server", "")


def test_a_trailing_slash_is_not_redirected_with_the_callers_host(client: TestClient) -> None:
    response = client.get("/v1/jobs/", headers={**auth(), "Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
    assert "evil.example" not in response.text


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
def test_an_id_with_a_trailing_newline_is_not_found(client: TestClient, method: str, route: str) -> None:
    response = client.request(method, route.format(f"{uuid.uuid4()}%0a"), headers=auth())
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
