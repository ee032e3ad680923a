"""Artifact storage: checkpoints, datasets, reports and job manifests.

``Store`` is the interface (``base.py``); ``LocalStore`` the local-filesystem implementation;
``Records`` the typed record layer on top. Keys come from ``keys.py`` only.
"""

from __future__ import annotations

from pathlib import Path

from models_store.base import StagedObject, Store
from models_store.errors import InvalidKey, NotFound, StoreError, TooLarge
from models_store.local import LocalStore
from models_store.records import ArtifactRecord, JobError, JobRecord, Records

__all__ = [
    "ArtifactRecord",
    "InvalidKey",
    "JobError",
    "JobRecord",
    "LocalStore",
    "NotFound",
    "Records",
    "StagedObject",
    "Store",
    "StoreError",
    "TooLarge",
    "open_store",
]


def open_store(location: str | Path) -> Store:
    """The store at ``location`` (a directory path; S3 URLs would be dispatched here)."""
    return LocalStore(location)
