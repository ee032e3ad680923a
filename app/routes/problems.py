"""The problem responses each route documents in OpenAPI (all ``application/problem+json``).

Every ``/v1`` route can answer 401 (no or wrong key), 429 (a rate limit) and 503 (the process at
its concurrency limit, or Redis down), so the routers declare those; routes add their own.
"""

from __future__ import annotations

from typing import Any

from app.schemas import Problem

__all__ = ["V1_COMMON", "problems"]

_WHY = {
    400: "Malformed request body (multipart, or a JSON body that is not UTF-8)",
    401: "Missing or unknown API key",
    404: "No such id for this tenant",
    408: "The request body arrived too slowly",
    409: "Conflict with the resource's state",
    413: "Body or dataset over a limit",
    415: "Unsupported media type or file format",
    422: "Invalid field (named in `errors`)",
    429: "Rate limit or quota; see Retry-After",
    503: "Busy or a dependency unavailable; see Retry-After",
    507: "The store has no room; nothing was kept",
}


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer", "minimum": 0}}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`: how to authenticate.",
                               "schema": {"type": "string"}}},
    429: _RETRY_AFTER, 503: _RETRY_AFTER, 507: _RETRY_AFTER,
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, each a :class:`Problem` (with the headers the
    API sends with it: ``Retry-After``, ``WWW-Authenticate``)."""
    entries: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entries[code] = {"model": Problem, "description": _WHY[code]}
        if code in _HEADERS:
            entries[code]["headers"] = _HEADERS[code]
    return entries


V1_COMMON = problems(401, 429, 503)


PROBLEM_REF = "#/components/schemas/Problem"
_FRAMEWORK_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _cannot_fail_validation(operation: dict[str, Any]) -> bool:
    """Whether FastAPI's validation can refuse nothing of ``operation``: no body, and only
    unconstrained string parameters (an id in the path; FastAPI documents a 422 all the same)."""
    if "requestBody" in operation:
        return False
    return all(parameter.get("schema", {}).keys() <= {"type", "title"}
               and parameter.get("schema", {}).get("type") == "string"
               for parameter in operation.get("parameters", []))


def as_problem_json(document: dict[str, Any]) -> dict[str, Any]:
    """Make every error response of an OpenAPI ``document`` say what the API sends: a
    :class:`Problem` as ``application/problem+json`` (FastAPI documents ``application/json``, and
    its own validation-error schema for 422, which our handlers replace), and drop the 422 of
    operations that cannot answer one."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if _cannot_fail_validation(operation):
                operation.get("responses", {}).pop("422", None)
            for code, response in operation.get("responses", {}).items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FRAMEWORK_SCHEMAS:
        schemas.pop(name, None)
    return document
