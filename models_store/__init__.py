"""Artifact storage: checkpoints, datasets, reports and job manifests.

``Store`` is the interface (``base.py``); ``LocalStore`` the local-filesystem implementation;
``S3Store`` (``models_store/s3/``, loaded only when used) the S3-compatible one; ``Records`` the
typed record layer on top. Keys come from ``keys.py`` only.
"""

from __future__ import annotations

from pathlib import Path

from models_store.base import StagedObject, Store
from models_store.errors import InvalidKey, NotFound, StoreError, StoreUnavailable, TooLarge
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
    "StoreUnavailable",
    "TooLarge",
    "is_s3_location",
    "open_store",
]


def is_s3_location(location: str | Path) -> bool:
    """Whether ``location`` names an S3 store (``s3://bucket/prefix``) rather than a directory."""
    return isinstance(location, str) and location.startswith("s3://")


def open_store(location: str | Path, *, endpoint_url: str | None = None, min_free_bytes: int = 0) -> Store:
    """The store at ``location``: ``s3://bucket/prefix`` (an S3-compatible endpoint, by default
    boto3's, see ``models_store/s3/location.py``) or a directory path (:class:`LocalStore`).
    ``min_free_bytes`` is the free-space floor of the local disk the store writes through.

    Raises:
        ValueError: a malformed ``s3://`` URL (the message says what to write).
    """
    if is_s3_location(location):
        from models_store.s3 import open_s3_store

        return open_s3_store(str(location), endpoint_url, min_free_bytes)
    return LocalStore(location, min_free_bytes=min_free_bytes)
