"""Content digests of local files and the idempotency key of a submission."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "submission_key"]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Lower-case hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def submission_key(body: dict[str, Any]) -> str:
    """An Idempotency-Key derived from a job body: the same uploads and spec give the same key,
    so a retried or re-run submission finds the job it made instead of making another."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "softunlearn-submit-" + hashlib.sha256(canonical.encode()).hexdigest()[:48]
