"""The storage interface used by the API and the workers.

Implementations: :class:`models_store.local.LocalStore` (local filesystem, the default) and
:class:`models_store.s3.S3Store` (an S3-compatible bucket: staging in a local file, ``commit`` as
one PUT or a multipart upload, ``update`` as conditional PUTs with ``If-Match`` retried on a lost
race, ``create_exclusive`` with ``If-None-Match: *``); ``open_store`` picks one from
``SOFTUNLEARN_STORE``, so ``app/`` and ``workers/`` do not know which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["StagedObject", "Store"]


@runtime_checkable
class StagedObject(Protocol):
    """A write in progress: bytes go to a private temporary place until :meth:`commit`.

    ``sha256`` and ``size`` are computed while the bytes stream in. Leaving the context without
    committing discards everything.
    """

    @property
    def size(self) -> int:
        """Bytes written so far."""

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far."""

    @property
    def path(self) -> Path:
        """A local path holding the staged bytes (for validation before commit)."""

    def write(self, data: bytes) -> None:
        """Append ``data``; raises :class:`~models_store.errors.TooLarge` past the cap."""

    def commit(self, key: str) -> None:
        """Publish the staged bytes at ``key`` atomically (replacing what was there)."""


@runtime_checkable
class Store(Protocol):
    """Content storage with atomic writes and tenant-namespaced keys (see ``keys.py``)."""

    def stage(self, max_bytes: int | None = None) -> AbstractContextManager[StagedObject]:
        """Start a streamed write capped at ``max_bytes``."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically."""

    def get_bytes(self, key: str) -> bytes:
        """Read the object at ``key``; raises NotFound."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    def size(self, key: str) -> int:
        """Size in bytes of the object at ``key``; raises NotFound."""

    def open_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object at ``key`` in chunks; raises NotFound."""

    def local_path(self, key: str) -> AbstractContextManager[Path]:
        """A local file with the object's bytes, valid inside the context; raises NotFound."""

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there; returns whether it wrote."""

    def update(self, key: str, mutate: Callable[[bytes | None], bytes]) -> bytes:
        """Read-modify-write ``key`` atomically; ``mutate`` gets None when absent. ``mutate`` may
        be called more than once (an optimistic store re-applies it after a lost race), so it
        must be a function of its argument; only the last call's result is written."""

    def publish_dir(self, prefix: str, source: Path) -> None:
        """Publish the regular files of directory ``source`` under ``prefix``, replacing an
        earlier publication (in one step on a filesystem; file by file on S3, where the caller's
        later manifest write is the commit point)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under ``prefix`` (no error when absent)."""

    def list_children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (empty when absent)."""

    def check_writable(self) -> None:
        """Raise OSError when the store cannot be written."""


    def free_bytes(self) -> int:
        """Free space left for new objects."""

    def check_room(self, incoming_bytes: int = 0) -> None:
        """Raise OSError (``ENOSPC``) when ``incoming_bytes`` more would cross the free-space floor."""

    def collect_garbage(self) -> int:
        """Remove staging left by dead processes; returns how many entries."""
