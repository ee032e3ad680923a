"""Query strings are matched whole: a parameter a route does not take is a 422, since a misspelt
filter (``?stat=failed``, ``?sha=...``) would otherwise list everything as if it had been honoured."""

from __future__ import annotations

from fastapi import Request

from app.errors import ApiError

__all__ = ["refuse_unknown_query"]


def refuse_unknown_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Raise a 422 naming the first query parameter of ``request`` not in ``allowed``."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        names = [name[:40] for name in unknown]
        raise ApiError(422, "validation_error", f"unknown query parameter {names[0]!r}; this route takes "
                       f"{', '.join(allowed)}",
                       errors=[{"field": name, "message": "unknown query parameter"} for name in names])
