"""Dataset schema of ``softunlearn correct``, from ``--schema`` and/or the column flags."""

from __future__ import annotations

import argparse

from workers.engine.io.datasets import DatasetSchema, load_schema, parse_schema

__all__ = ["schema_from_args"]


def schema_from_args(args: argparse.Namespace) -> DatasetSchema:
    """Combine ``--schema``, ``--label``, ``--sensitive`` and ``--features`` into one schema.

    Without ``--schema`` both ``--label`` and ``--sensitive`` are required. A ``--sensitive``
    column that the schema does not list is added to its sensitive columns.

    Raises:
        DatasetError: the combination does not name a label and a sensitive column.
    """
    base = load_schema(args.schema).to_dict() if args.schema else {}
    if args.label:
        base["label"] = args.label
    if args.sensitive:
        listed = list(base.get("sensitive", []))
        base["sensitive"] = listed if args.sensitive in listed else [args.sensitive, *listed]
    if args.features:
        base["features"] = [c.strip() for c in args.features.split(",") if c.strip()]
    if "label" not in base or not base.get("sensitive"):
        missing = [flag for flag, key in (("--label", "label"), ("--sensitive", "sensitive"))
                   if not base.get(key)]
        raise argparse.ArgumentTypeError(f"name {' and '.join(missing)} (or pass --schema)")
    return parse_schema(base)
