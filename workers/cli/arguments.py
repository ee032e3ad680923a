"""Arguments ``correct`` and ``submit`` share: the input files and the dataset's columns.

Standard library only (the thin client's ``submit`` uses it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_column_arguments", "add_input_files", "missing_columns", "overlay_columns"]


def add_input_files(group: argparse._ArgumentGroup, data_formats: str) -> None:
    """``--model``, ``--arch``, ``--train``, ``--audit`` (required) and ``--eval``."""
    group.add_argument("--model", required=True, type=Path, help="checkpoint (.safetensors)")
    group.add_argument("--arch", required=True, type=Path, help="architecture JSON")
    group.add_argument("--train", required=True, type=Path, help=f"training data ({data_formats})")
    group.add_argument("--audit", required=True, type=Path, help="audit data defining the target")
    group.add_argument("--eval", type=Path, help="held-out data, reported only")


def add_column_arguments(group: argparse._ArgumentGroup) -> None:
    """``--label``, ``--sensitive``, ``--schema`` and ``--features``."""
    group.add_argument("--label", help="label column (or take it from --schema)")
    group.add_argument("--sensitive", help="sensitive column (or the first in --schema)")
    group.add_argument("--schema", type=Path, help="dataset schema JSON (label, sensitive, features)")
    group.add_argument("--features", help="comma-separated feature columns (default: all others)")


def overlay_columns(schema: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``schema`` with ``--label``, ``--sensitive`` (put first, added when not listed) and
    ``--features`` laid over it."""
    merged = dict(schema)
    if args.label:
        merged["label"] = args.label
    if args.sensitive:
        listed = list(merged.get("sensitive", []))
        merged["sensitive"] = listed if args.sensitive in listed else [args.sensitive, *listed]
    if args.features:
        merged["features"] = [c.strip() for c in args.features.split(",") if c.strip()]
    return merged


def missing_columns(schema: dict[str, Any]) -> str | None:
    """What to name when ``schema`` lacks a label or a sensitive column, else None."""
    missing = [flag for flag, key in (("--label", "label"), ("--sensitive", "sensitive"))
               if not schema.get(key)]
    return f"name {' and '.join(missing)} (or pass --schema)" if missing else None
