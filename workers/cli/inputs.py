"""Dataset schema of ``softunlearn correct``, from ``--schema`` and/or the column flags."""

from __future__ import annotations

import argparse

from workers.cli.arguments import missing_columns, overlay_columns
from workers.engine.io.datasets import DatasetSchema, load_schema, parse_schema

__all__ = ["schema_from_args"]


def schema_from_args(args: argparse.Namespace) -> DatasetSchema:
    """Combine ``--schema``, ``--label``, ``--sensitive`` and ``--features`` into one schema.

    Without ``--schema`` both ``--label`` and ``--sensitive`` are required. A ``--sensitive``
    column that the schema does not list is added to its sensitive columns.

    Raises:
        DatasetError: the combination does not name a label and a sensitive column.
    """
    base = overlay_columns(load_schema(args.schema).to_dict() if args.schema else {}, args)
    missing = missing_columns(base)
    if missing:
        raise argparse.ArgumentTypeError(missing)
    return parse_schema(base)
