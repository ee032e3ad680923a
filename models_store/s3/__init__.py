"""The S3-compatible store (``SOFTUNLEARN_STORE=s3://bucket/prefix``): see ``store.py`` for its
semantics and ``location.py`` for its configuration. Imports boto3, so it is loaded only when
an S3 store is opened."""

from __future__ import annotations

from models_store.s3.location import S3Location, is_s3_url, parse_s3_url
from models_store.s3.store import S3StagedObject, S3Store, open_s3_store

__all__ = ["S3Location", "S3StagedObject", "S3Store", "is_s3_url", "open_s3_store", "parse_s3_url"]
