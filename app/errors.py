"""HTTP errors as RFC 9457 problem details; the one place where status codes are chosen.

Every problem has a stable ``type`` (``urn:softunlearn:problem:<code>``) and ``code``; validation
problems also list ``errors`` as ``{"field": "objective.reduction", "message": ...}``.
"""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from models_store import StoreUnavailable
from workers.redact import redact_paths

__all__ = [
    "PROBLEM_JSON",
    "ApiError",
    "install_error_handlers",
    "problem_document",
    "problem_response",
    "problem_type",
    "storage_full",
]

log = logging.getLogger(__name__)
_NAMED_FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*)[: ]")
PROBLEM_JSON = "application/problem+json"
_FASTAPI_BODY_ERROR = "There was an error parsing the body"
"""FastAPI's 400 for a body its JSON decoder could not even read (e.g. invalid UTF-8)."""
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_TITLES = {
    400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
    408: "Request timeout", 409: "Conflict", 413: "Content too large", 415: "Unsupported media type",
    422: "Unprocessable content", 429: "Too many requests", 500: "Internal server error",
    503: "Service unavailable", 507: "Insufficient storage",
}
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def problem_type(code: str) -> str:
    """The ``type`` URI of problem ``code``."""
    return f"urn:softunlearn:problem:{code}"


class ApiError(Exception):
    """An error answered as a problem document."""

    def __init__(self, status: int, code: str, detail: str, *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors, self.headers, self.extra = errors, headers, extra or {}


def problem_document(error: ApiError, instance: str) -> dict[str, Any]:
    """The RFC 9457 body of ``error`` for a request to ``instance`` (a path); server paths in its
    messages (a library's exception text may quote one) are redacted."""
    body: dict[str, Any] = {
        "type": problem_type(error.code),
        "title": _TITLES.get(error.status, "Error"),
        "status": error.status,
        "detail": redact_paths(error.detail),
        "instance": instance,
        "code": error.code,
        **error.extra,
    }
    if error.errors is not None:
        body["errors"] = [{**item, "message": redact_paths(item.get("message", ""))} for item in error.errors]
    return body


def problem_response(request: Request, error: ApiError) -> JSONResponse:
    """Render ``error`` as ``application/problem+json``."""
    return JSONResponse(problem_document(error, request.url.path), status_code=error.status,
                        headers=error.headers, media_type=PROBLEM_JSON)


def storage_full() -> ApiError:
    """507: the store has no room (disk full or below the operator's free-space floor)."""
    return ApiError(507, "insufficient_storage", "the server has no room to store this request right "
                    "now; nothing was kept. Retry later or ask the operator to free space",
                    headers={"Retry-After": "60"})


def store_unavailable() -> ApiError:
    """503: the artifact store cannot be reached (S3 endpoint down, credentials refused); what
    the operator must change is logged, not told to the client."""
    return ApiError(503, "store_unavailable", "the artifact store is unavailable right now; nothing "
                    "was changed by this request. Retry later", headers={"Retry-After": "30"})


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def _refine(field: str, message: str) -> str:
    """Use the dotted field a config error names itself (``objective.reduction must be ...``)."""
    match = _NAMED_FIELD.match(message.removeprefix("spec."))
    if match and (field == "body" or match.group(1).startswith(field + ".")):
        return match.group(1)
    return field


def validation_problem(errors: list[dict[str, Any]]) -> ApiError:
    """A 422 naming every invalid field."""
    items = []
    for error in errors:
        message = _message(error)
        items.append({"field": _refine(_field(tuple(error.get("loc", ()))), message), "message": message})
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in items[:5])
    return ApiError(422, "validation_error", detail, errors=items)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):
        raise exc
    return problem_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    return problem_response(request, validation_problem(list(exc.errors())))


def _allowed_methods(request: Request) -> str:
    """Every method some operation of this path takes, from the app's OpenAPI document
    (Starlette names only the first matching route's, and GET and DELETE of a path are two)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.scope["path"]):
            methods |= {name.upper() for name in operations if name in _HTTP_METHODS}
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        detail = f"method not allowed on this path; it accepts {headers['Allow']}"
    elif exc.status_code == 400 and detail == _FASTAPI_BODY_ERROR:
        detail = "the request body could not be parsed; send a JSON object encoded as UTF-8"
    error = ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), detail, headers=headers)
    return problem_response(request, error)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StoreUnavailable):
        log.error("store unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, store_unavailable())
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        log.error("store full on %s %s: %s", request.method, request.url.path, exc.strerror)
        return problem_response(request, storage_full())
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, ApiError(500, "internal_error", "an unexpected error occurred"))


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected)
