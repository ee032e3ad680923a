"""Model identity: what a checkpoint says it is, checked against what the job says it is.

A checkpoint SoftUnlearn writes records, in its safetensors ``__metadata__`` under the one key
``softunlearn`` (a JSON object; one key keeps the file byte-for-byte reproducible, since the
format does not fix the order of metadata keys), the ``architecture`` it was rebuilt with, the
``feature_names`` in the order the model reads them, and the ``parent_sha256`` of the checkpoint
it was corrected from (plus ``version`` and, when known, ``report_id``). A checkpoint that
records these is refused when the job gives another architecture, and its feature columns are
matched by name, never by position. Other tools' metadata is left alone. Torch-free (the HTTP
front end uses it at upload).
"""

from __future__ import annotations

import json
from typing import Any

from workers.engine.errors import CheckpointError
from workers.engine.io.architecture import ArchSpec, parse_arch
from workers.engine.io.json_input import load_json

__all__ = [
    "METADATA_KEY",
    "check_recorded_architecture",
    "checkpoint_metadata",
    "recorded_feature_names",
    "recorded_identity",
]

METADATA_KEY = "softunlearn"


def checkpoint_metadata(arch: ArchSpec, feature_names: tuple[str, ...], parent_sha256: str | None = None,
                        report_id: str | None = None, version: str | None = None) -> dict[str, str]:
    """The ``__metadata__`` of a checkpoint SoftUnlearn writes."""
    identity: dict[str, Any] = {"architecture": arch.to_dict(), "feature_names": list(feature_names)}
    for key, value in (("parent_sha256", parent_sha256), ("report_id", report_id), ("version", version)):
        if value is not None:
            identity[key] = value
    return {METADATA_KEY: json.dumps(identity, sort_keys=True)}


def recorded_identity(metadata: dict[str, str]) -> dict[str, Any]:
    """What the checkpoint records about itself ({} when it records nothing).

    Raises:
        CheckpointError: the record is not a JSON object.
    """
    if METADATA_KEY not in metadata:
        return {}
    try:
        identity = load_json(metadata[METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint metadata {METADATA_KEY!r} is not valid JSON: {exc}") from exc
    if not isinstance(identity, dict):
        raise CheckpointError(f"checkpoint metadata {METADATA_KEY!r} must be a JSON object")
    return identity


def check_recorded_architecture(metadata: dict[str, str], arch: ArchSpec) -> None:
    """Refuse an architecture that differs from the one the checkpoint records (if it records one).

    Raises:
        CheckpointError: naming each field that differs.
    """
    identity = recorded_identity(metadata)
    if "architecture" not in identity:
        return
    recorded = parse_arch(identity["architecture"]).to_dict()
    given = arch.to_dict()
    differences = [f"{key}: the checkpoint records {recorded.get(key)!r}, the given architecture says "
                   f"{given.get(key)!r}" for key in sorted(set(recorded) | set(given))
                   if recorded.get(key) != given.get(key)]
    if differences:
        raise CheckpointError("the checkpoint was saved for another architecture; " + "; ".join(differences)
                              + " (pass the architecture the model was built with)")


def recorded_feature_names(metadata: dict[str, str]) -> tuple[str, ...] | None:
    """The feature columns in the order the model reads them, if the checkpoint records them.

    Raises:
        CheckpointError: the record is not a list of distinct names.
    """
    names = recorded_identity(metadata).get("feature_names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise CheckpointError("checkpoint metadata feature_names must be a list of distinct column names")
    return tuple(names)
