"""The interactive API docs work offline: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load
every asset from the server itself, under a CSP that allows scripts from ``'self'`` only, and a
real headless Chromium on a real ``softunlearn serve`` renders every operation of the OpenAPI
document with no console error and no request to any other host."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.docs import ASSET_CACHE
from tests.app.support import TestClient, make_settings
from tests.browser import (
    DevTools,
    console_errors,
    launch,
    needs_chromium,
    open_page,
    requested_urls,
    screenshot,
    wait_until,
)
from tests.faults.serving import Server, serve

PAGES = ("/docs", "/redoc")
_REFERENCE = re.compile(r'(?:src|href)="([^"]*)"')
RENDER_SECONDS = 30.0


def _directives(csp: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in csp.split(";") if part.strip())}


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_loads_everything_from_the_server_under_a_strict_csp(client: TestClient,
                                                                         page: str) -> None:
    response = client.get(page)  # no Authorization: the docs are public, like the OpenAPI document
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "http:" not in response.text and "https:" not in response.text and "//" not in response.text
    csp = _directives(response.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and not any("http" in v for vs in csp.values() for v in vs)
    references = _REFERENCE.findall(response.text)
    assert len(references) >= 3, references
    for url in references:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.headers["content-security-policy"] == response.headers["content-security-policy"]
        assert asset.headers["x-content-type-options"] == "nosniff"
        if "/assets/" in url:
            assert asset.headers["cache-control"] == ASSET_CACHE
            assert len(asset.content) < 2 * 2**20
        else:
            assert "max-age" in asset.headers["cache-control"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``softunlearn serve`` (the docs need no Redis, store or key)."""
    root = tmp_path_factory.mktemp("docs-serve")
    with serve(make_settings(root / "store", f"t{uuid.uuid4().hex[:10]}"), root / "serve.log") as running:
        yield running


@pytest.fixture(scope="module")
def operations(server: Server) -> list[dict[str, Any]]:
    """Every operation of the served OpenAPI document."""
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    return [operation for path in document["paths"].values() for operation in path.values()]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """One headless Chromium for the module (each page gets its own tab)."""
    with launch(tmp_path_factory.mktemp("docs-browser")) as client:
        yield client


def _offline_and_clean(browser: DevTools, session: str, server: Server) -> None:
    requested = requested_urls(browser.events, session)
    assert requested and all(url.startswith(f"{server.url}/") or url.startswith(("data:", "blob:"))
                             for url in requested), requested
    assert console_errors(browser.events, session) == []


SWAGGER_OPERATIONS = ("Array.from(document.querySelectorAll('.opblock-summary-operation-id'))"
                      ".map((el) => el.textContent.trim())")


@needs_chromium
@pytest.mark.timeout(90)
def test_swagger_ui_renders_every_operation_offline(browser: DevTools, server: Server,
                                                    operations: list[dict[str, Any]], tmp_path: Path) -> None:
    session = open_page(browser, f"{server.url}/docs")
    wait_until(browser, session, f"{SWAGGER_OPERATIONS}.length >= {len(operations)}", RENDER_SECONDS)
    shown = wait_until(browser, session, SWAGGER_OPERATIONS, 1)
    assert sorted(shown) == sorted(operation["operationId"] for operation in operations)
    png = screenshot(browser, session, tmp_path / "swagger-ui.png")
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    _offline_and_clean(browser, session, server)


REDOC_OPERATIONS = ("Array.from(document.querySelectorAll('[data-section-id^=\"operation/\"]'))"
                    ".map((el) => el.getAttribute('data-section-id').slice('operation/'.length))")


@needs_chromium
@pytest.mark.timeout(90)
def test_redoc_renders_every_operation_offline(browser: DevTools, server: Server,
                                               operations: list[dict[str, Any]], tmp_path: Path) -> None:
    session = open_page(browser, f"{server.url}/redoc")
    wait_until(browser, session, f"{REDOC_OPERATIONS}.length >= {len(operations)}", RENDER_SECONDS)
    shown = wait_until(browser, session, REDOC_OPERATIONS, 1)
    assert sorted(set(shown)) == sorted(operation["operationId"] for operation in operations)
    summaries = wait_until(browser, session, "document.body.innerText", 1)
    assert all(operation["summary"] in summaries for operation in operations)
    png = screenshot(browser, session, tmp_path / "redoc.png")
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    _offline_and_clean(browser, session, server)
