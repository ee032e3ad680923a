"""The versioned JSON Schema of ``report.json`` (``report.schema.json`` beside this module).

Compatibility rule: keys are only added, never renamed or removed; unknown keys are allowed; a
breaking change bumps ``report_version`` and the schema's ``$id``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["SCHEMA_FILE", "report_schema", "validate_report"]

SCHEMA_FILE = "report.schema.json"
MAX_LISTED_ERRORS = 5


def report_schema() -> dict[str, Any]:
    """The report schema (JSON Schema draft 2020-12), a fresh copy on each call."""
    text = resources.files("workers.reporting").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(report_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate_report(report: Any) -> None:
    """Check ``report`` against the schema.

    Raises:
        ValueError: the report does not match; the message lists the first few errors, each
            with its JSON path (e.g. ``$.before.eval: 'accuracy' is a required property``).
    """
    errors = sorted(_validator().iter_errors(report), key=lambda error: error.json_path)
    if not errors:
        return
    listed = "; ".join(f"{error.json_path}: {error.message}" for error in errors[:MAX_LISTED_ERRORS])
    more = f" (and {len(errors) - MAX_LISTED_ERRORS} more)" if len(errors) > MAX_LISTED_ERRORS else ""
    schema_id = report_schema().get("$id", SCHEMA_FILE)
    raise ValueError(f"the report does not match {schema_id}: {len(errors)} error(s): {listed}{more}")
