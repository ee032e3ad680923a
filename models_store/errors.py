"""Exceptions raised by the artifact store.

The tree::

    StoreError (Exception)
    ├── InvalidKey        a key that is not one we generate (never derived from user input)
    ├── NotFound          nothing stored at the key
    ├── TooLarge          a streamed write went past its byte cap (nothing was kept)
    └── StoreUnavailable  (also an OSError) misconfigured or unreachable store (S3: bucket,
                          credentials, endpoint, or an update that lost every retry)
"""

from __future__ import annotations

__all__ = ["InvalidKey", "NotFound", "StoreError", "StoreUnavailable", "TooLarge"]


class StoreError(Exception):
    """Base class of the store's errors."""


class InvalidKey(StoreError):
    """The key does not match the store's key grammar."""


class NotFound(StoreError):
    """Nothing is stored at the key."""


class TooLarge(StoreError):
    """A streamed write exceeded its byte cap; the partial data was discarded."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class StoreUnavailable(StoreError, OSError):
    """The store cannot be used as configured or reached (an OSError, as a failing disk is):
    the message says what to change (bucket, credentials, endpoint)."""
