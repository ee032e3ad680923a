"""A streamed write into a local staging file, with a byte cap and a running SHA-256.

Both stores stage uploads on a local disk (validation reads the bytes before they are
published); they differ only in how :meth:`StagingFile.commit` publishes them.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from models_store.errors import TooLarge

__all__ = ["StagingFile", "discard_unless_committed"]


class StagingFile:
    """The staged bytes at ``path``; subclasses implement :meth:`commit`."""

    def __init__(self, path: Path, max_bytes: int | None) -> None:
        self._max = max_bytes
        self._path = path
        self._handle: BinaryIO = open(self._path, "xb")  # noqa: SIM115 (closed by commit/discard)
        self._hash = hashlib.sha256()
        self._size = 0
        self.committed = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()

    @property
    def path(self) -> Path:
        """The staging file (flushed on every access)."""
        self._handle.flush()
        return self._path

    def write(self, data: bytes) -> None:
        """Append ``data``.

        Raises:
            TooLarge: the cap would be exceeded; the staged bytes are discarded.
        """
        if self._max is not None and self._size + len(data) > self._max:
            self.discard()
            raise TooLarge(self._max)
        self._handle.write(data)
        self._hash.update(data)
        self._size += len(data)

    def commit(self, key: str) -> None:
        """Publish the staged bytes at ``key``."""
        raise NotImplementedError

    def discard(self) -> None:
        """Close and delete the staging file (idempotent; also when closing fails, e.g. disk full)."""
        try:
            if not self._handle.closed:
                self._handle.close()
        except OSError:
            pass  # the buffered bytes could not be flushed: they are being thrown away anyway
        finally:
            self._path.unlink(missing_ok=True)


Staged = TypeVar("Staged", bound=StagingFile)


@contextlib.contextmanager
def discard_unless_committed(staged: Staged) -> Iterator[Staged]:
    """Yield ``staged``; on exit, discard it unless it was committed."""
    try:
        yield staged
    finally:
        if not staged.committed:
            staged.discard()
