"""What the OpenAPI document says beyond what FastAPI infers: readable operation ids and the
report's schema.

Operation ids are the route function's name in camelCase (``create_job`` → ``createJob``), so
route functions are named verb + resource, the resource being the job's where an output of a job
is meant (``get_job_report``, ``get_job_model``); ``tests/app/test_openapi.py`` checks that they
are unique.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

from workers.reporting.schema import report_schema

__all__ = ["REPORT_REF", "links_by_id", "operation_id", "with_report_schema"]

REPORT = "Report"
REPORT_REF = f"#/components/schemas/{REPORT}"
_DEFS = "#/$defs/"


def operation_id(route: APIRoute) -> str:
    """``route``'s operation id: its function's name in camelCase."""
    first, *rest = route.name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def links_by_id(parameter: str, *operation_ids: str) -> dict[str, dict[str, Any]]:
    """OpenAPI ``links`` of a response whose body's ``id`` is the ``parameter`` of the operations
    ``operation_ids`` (what to call next with the object just made)."""
    return {target[:1].upper() + target[1:]: {"operationId": target,
                                               "parameters": {parameter: "$response.body#/id"}}
            for target in operation_ids}


def _component_name(definition: str) -> str:
    return REPORT + definition[:1].upper() + definition[1:]


def _rewrite_refs(node: Any) -> Any:
    """``node`` with every ``#/$defs/x`` reference pointing at the component ``ReportX``."""
    if isinstance(node, dict):
        rewritten = {key: _rewrite_refs(value) for key, value in node.items()}
        ref = rewritten.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(_DEFS):
                raise ValueError(f"report schema: unsupported $ref {ref!r} (only {_DEFS}... is embedded)")
            rewritten["$ref"] = f"#/components/schemas/{_component_name(ref.removeprefix(_DEFS))}"
        return rewritten
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def report_components() -> dict[str, Any]:
    """The report JSON Schema (draft 2020-12, which OpenAPI 3.1 schemas are) as components:
    ``Report`` and one ``Report<Def>`` per ``$defs`` entry. ``$id`` and ``$schema`` are dropped:
    an ``$id`` inside the document would make its references resolve against another base."""
    schema = report_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})
    for keyword in ("$id", "$schema"):
        schema.pop(keyword, None)
    components = {REPORT: _rewrite_refs(schema)}
    components.update({_component_name(name): _rewrite_refs(value) for name, value in definitions.items()})
    return components


def with_report_schema(document: dict[str, Any]) -> dict[str, Any]:
    """Add the report's schema to ``document``'s components (routes refer to it by
    :data:`REPORT_REF`)."""
    document.setdefault("components", {}).setdefault("schemas", {}).update(report_components())
    return document
