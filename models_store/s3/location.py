"""Where an S3 store lives (``s3://bucket/prefix``), its boto3 client, and its errors translated.

The endpoint comes from the caller (``SOFTUNLEARN_S3_ENDPOINT_URL`` through the settings) or,
when none is given, from boto3's own configuration (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``,
profiles); credentials and region always come from boto3's usual chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, profiles, instance roles).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from models_store.errors import NotFound, StoreError, StoreUnavailable
from models_store.keys import KEY_PATTERN

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Location", "client_for", "error_code", "is_s3_url", "parse_s3_url", "translate"]

SCHEME = "s3://"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
CREDENTIAL_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                              "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"})
_clients: dict[tuple[int, str | None], S3Client] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix inside it ("" for the bucket's root), and the endpoint (None:
    boto3's own configuration)."""

    bucket: str
    prefix: str
    endpoint_url: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def object_name(self, key: str) -> str:
        """The S3 object name of store key ``key``."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def key_of(self, name: str) -> str:
        """The store key of S3 object name ``name`` (inverse of :meth:`object_name`)."""
        return name[len(self.prefix) + 1:] if self.prefix else name

    @property
    def endpoint(self) -> str:
        """The endpoint for messages."""
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL") or "AWS S3"


def is_s3_url(location: object) -> bool:
    """Whether ``location`` names an S3 store (``s3://...``)."""
    return isinstance(location, str) and location.startswith(SCHEME)


def parse_s3_url(url: str, endpoint_url: str | None = None) -> S3Location:
    """Parse ``s3://bucket[/prefix]``.

    Raises:
        ValueError: not such a URL, a bucket name S3 refuses, or a prefix outside the key grammar;
            the message says what to write instead.
    """
    if not url.startswith(SCHEME):
        raise ValueError(f"an S3 store is written s3://BUCKET/PREFIX, not {url[:80]!r}")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"SOFTUNLEARN_STORE names the S3 bucket {bucket[:70]!r}: a bucket name is 3-63 "
                         "lower-case letters, digits, dots and dashes")
    if prefix and not KEY_PATTERN.fullmatch(prefix):
        raise ValueError(f"SOFTUNLEARN_STORE has the key prefix {prefix[:70]!r}: use lower-case letters, "
                         "digits, '.', '_' and '-' in '/'-separated parts")
    return S3Location(bucket, prefix, endpoint_url or None)


def _custom_endpoint(endpoint_url: str | None) -> bool:
    return bool(endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))


def client_for(endpoint_url: str | None) -> S3Client:
    """A boto3 S3 client for ``endpoint_url``, one per process (clients are thread-safe, but a
    forked work horse must not share its parent's connections)."""
    import boto3

    slot = (os.getpid(), endpoint_url)
    with _clients_lock:
        if slot not in _clients:
            # Path-style addressing on a custom endpoint: MinIO and moto serve it without DNS set-up.
            config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32,
                            connect_timeout=10, read_timeout=60,
                            s3={"addressing_style": "path" if _custom_endpoint(endpoint_url) else "auto"})
            session = boto3.session.Session()
            _clients[slot] = session.client("s3", endpoint_url=endpoint_url, config=config)
        return _clients[slot]


def error_code(exc: ClientError) -> str:
    """The S3 error code of a ClientError ("" when the answer had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: Exception, location: S3Location, key: str) -> Exception:
    """The store error for a botocore failure on ``key``: NotFound, or StoreUnavailable saying
    what to change (the bucket, the credentials, the endpoint)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in MISSING_CODES:
            return NotFound(key)
        if code == "NoSuchBucket":
            return StoreUnavailable(f"the S3 bucket {location.bucket!r} does not exist at "
                                    f"{location.endpoint}: create it, or point SOFTUNLEARN_STORE at an "
                                    "existing bucket")
        if code in CREDENTIAL_CODES:
            return StoreUnavailable(f"{location.endpoint} refused access to bucket {location.bucket!r} "
                                    f"({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the "
                                    "bucket's policy")
        return StoreUnavailable(f"{location.endpoint} answered {code or 'an error'} on bucket "
                                f"{location.bucket!r}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreUnavailable("no AWS credentials found for the S3 store: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    if isinstance(exc, EndpointConnectionError | ConnectionError):
        return StoreUnavailable(f"cannot reach the S3 endpoint {location.endpoint}: check "
                                "SOFTUNLEARN_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) and the network")
    if isinstance(exc, BotoCoreError):
        return StoreUnavailable(f"the S3 store at {location.endpoint} failed: {type(exc).__name__}")
    return StoreError(str(exc))
