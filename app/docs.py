"""The interactive API docs, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

Every asset comes from installed packages, nothing from a CDN: the Swagger UI and ReDoc bundles
(with their licences) from ``fastapi-standalone-docs``, whose ReDoc build already asks for its
Redocly logo at ``<page>/logo-mini.svg`` instead of a CDN; the pages themselves from
``fastapi-csp-docs``, which keeps every script and style in a file of its own, so the pages' CSP
(``app.headers.DOCS``) allows scripts from ``'self'`` only, never inline ones.

The bundles are served under a path naming the package version, so they can be cached for a
year: an upgrade changes their URLs.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import fastapi_csp_docs
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["ASSETS_URL", "ASSET_CACHE", "install_docs"]

ASSETS_DIR = Path(str(files("fastapi_standalone_docs") / "static"))
ASSETS_URL = f"/docs/assets/{version('fastapi-standalone-docs')}"
ASSET_CACHE = "public, max-age=31536000, immutable"
"""For the versioned bundles; the small unversioned files below are revalidated daily."""
SMALL_FILE_CACHE = "public, max-age=86400"
SWAGGER_PARAMETERS = {"validatorUrl": None, "displayOperationId": True}
"""No online validator (it would fetch from swagger.io); operation ids shown beside each route."""


class _VersionedAssets(StaticFiles):
    """Static files with a long cache lifetime (their URL changes with their version)."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = ASSET_CACHE
        return response


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Serve Swagger UI at ``/docs`` and ReDoc at ``/redoc`` on ``app`` (created with
    ``docs_url=None, redoc_url=None``), with every asset from this process."""
    title = app.title
    app.mount(ASSETS_URL, _VersionedAssets(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_page(request: Request) -> HTMLResponse:
        root = _root(request)
        return fastapi_csp_docs.get_swagger_ui_html(
            title=f"{title} API - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/fastapi/favicon.png",
            swagger_ui_init_script_url=f"{root}/docs/swagger-initializer.js")

    @app.get("/docs/swagger-initializer.js", include_in_schema=False)
    def swagger_initializer(request: Request) -> Response:
        response = fastapi_csp_docs.get_swagger_ui_init_js(openapi_url=f"{_root(request)}{openapi_url}",
                                                           swagger_ui_parameters=SWAGGER_PARAMETERS)
        response.headers["Cache-Control"] = SMALL_FILE_CACHE
        return response

    @app.get("/redoc", include_in_schema=False)
    def redoc_page(request: Request) -> HTMLResponse:
        root = _root(request)
        return fastapi_csp_docs.get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{title} API - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/fastapi/favicon.png",
            redoc_css_url=f"{root}/redoc/redoc.css", with_google_fonts=False)

    @app.get("/redoc/redoc.css", include_in_schema=False)
    def redoc_css() -> Response:
        response = fastapi_csp_docs.get_redoc_css()
        response.headers["Cache-Control"] = SMALL_FILE_CACHE
        return response

    @app.get("/redoc/logo-mini.svg", include_in_schema=False)
    def redoc_logo() -> FileResponse:
        return FileResponse(ASSETS_DIR / "redoc" / "logo-mini.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": SMALL_FILE_CACHE})
