"""The local-filesystem store: every write is tmp file + fsync + ``os.replace``.

Layout under ``root``: objects at ``root/<key>``; staging files in ``root/.tmp`` (same
filesystem, so the final rename is atomic); lock files in ``root/.locks``. A crash leaves at most
stale staging files, never a partial object at a final key.

Every staging name carries its process's owner token, and each process holds an exclusive
``flock`` on ``.locks/owner-<token>`` for its lifetime, so :meth:`LocalStore.collect_garbage` can
tell a live process's staging file (leave it) from a dead one's (remove it, however young) — at
API start-up that clears what an upload cut by a crash left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from models_store.errors import InvalidKey, NotFound
from models_store.keys import KEY_PATTERN
from models_store.staging import StagingFile, discard_unless_committed

__all__ = ["LocalStagedObject", "LocalStore", "owner_alive", "owner_token"]

STAGING_MAX_AGE_S = 24 * 3600
"""Staging files without an owner token older than this are removed by
:meth:`LocalStore.collect_garbage` (those with one go as soon as their owner is dead)."""
_OWNER = re.compile(r"^(?:stage|dir|old)-([0-9a-f]{16})-[0-9a-f]{32}$")
_owners: dict[tuple[int, Path], tuple[str, BinaryIO]] = {}


def owner_token(lock_dir: Path) -> str:
    """This process's owner token for the store whose locks are in ``lock_dir`` (held while it lives)."""
    slot = (os.getpid(), lock_dir)
    if slot not in _owners:
        token = uuid.uuid4().hex[:16]
        handle = open(lock_dir / f"owner-{token}", "a+b")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _owners:
            atexit.register(_release_owners)
        _owners[slot] = (token, handle)
    return _owners[slot][0]


def _release_owners() -> None:
    """At a clean exit: drop this process's owner locks (a crash leaves them to the collector)."""
    for (pid, lock_dir), (token, handle) in list(_owners.items()):
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                (lock_dir / f"owner-{token}").unlink(missing_ok=True)
            handle.close()
            del _owners[(pid, lock_dir)]


def owner_alive(lock_dir: Path, token: str) -> bool:
    """Whether the process that took ``token`` in ``lock_dir`` still holds its lock (lives)."""
    try:
        handle = open(lock_dir / f"owner-{token}", "rb")  # noqa: SIM115
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStagedObject(StagingFile):
    """A streamed write into ``root/.tmp`` with a byte cap and a running SHA-256."""

    def __init__(self, store: LocalStore, max_bytes: int | None) -> None:
        super().__init__(store.tmp_dir / store.staging_name("stage"), max_bytes)
        self._store = store

    def sync(self) -> None:
        """Flush and fsync the staged bytes."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def commit(self, key: str) -> None:
        """Fsync and rename the staged file to ``key``."""
        self.sync()
        self._handle.close()
        target = self._store.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, target)
        _fsync_dir(target.parent)
        self.committed = True


class LocalStore:
    """Artifacts on a local filesystem under ``root``."""

    def __init__(self, root: str | Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).expanduser().resolve()
        self.tmp_dir = self.root / ".tmp"
        self.lock_dir = self.root / ".locks"
        self.min_free_bytes = min_free_bytes
        for directory in (self.root, self.tmp_dir, self.lock_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def staging_name(self, kind: str) -> str:
        """A fresh name in ``.tmp`` carrying this process's owner token."""
        return f"{kind}-{owner_token(self.lock_dir)}-{uuid.uuid4().hex}"

    def free_bytes(self) -> int:
        """Free space of the store's filesystem."""
        return shutil.disk_usage(self.root).free

    def check_room(self, incoming_bytes: int = 0) -> None:
        """Refuse a write of ``incoming_bytes`` that would leave less than ``min_free_bytes`` free.

        Raises:
            OSError: ``ENOSPC``, as a full disk would.
        """
        if self.free_bytes() - incoming_bytes < self.min_free_bytes:
            raise OSError(errno.ENOSPC, "the store is below its free-space floor")

    def path_of(self, key: str) -> Path:
        """The file of ``key``.

        Raises:
            InvalidKey: the key is not in the key grammar or escapes the root.
        """
        if not KEY_PATTERN.fullmatch(key) or len(key) > 512:
            raise InvalidKey(f"invalid key {key[:80]!r}")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(f"key {key[:80]!r} escapes the store")
        return path

    def stage(self, max_bytes: int | None = None) -> contextlib.AbstractContextManager[LocalStagedObject]:
        """Start a streamed write; discarded on exit unless committed."""
        return discard_unless_committed(LocalStagedObject(self, max_bytes))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically."""
        with self.stage() as staged:
            staged.write(data)
            staged.commit(key)

    def get_bytes(self, key: str) -> bytes:
        """Read the object at ``key``."""
        try:
            return self.path_of(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(key) from exc

    def exists(self, key: str) -> bool:
        """Whether a file is stored at ``key``."""
        return self.path_of(key).is_file()

    def size(self, key: str) -> int:
        """Size of the object at ``key``."""
        path = self.path_of(key)
        if not path.is_file():
            raise NotFound(key)
        return path.stat().st_size

    def open_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object at ``key`` (opened eagerly, so NotFound is raised here)."""
        path = self.path_of(key)
        if not path.is_file():
            raise NotFound(key)
        handle = open(path, "rb")  # noqa: SIM115 (closed by the generator)

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(chunk_size):
                    yield block

        return chunks()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """The object's own file (read-only by convention)."""
        path = self.path_of(key)
        if not path.is_file():
            raise NotFound(key)
        yield path

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless something is there (atomic via ``os.link``)."""
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.stage() as staged:
            staged.write(data)
            staged.sync()
            try:
                os.link(staged.path, target)
            except FileExistsError:
                return False
        return True

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        name = hashlib.sha256(key.encode()).hexdigest()
        with open(self.lock_dir / name, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def update(self, key: str, mutate: Callable[[bytes | None], bytes]) -> bytes:
        """Read-modify-write ``key`` under an exclusive ``flock`` (across processes)."""
        with self._locked(key):
            try:
                current: bytes | None = self.get_bytes(key)
            except NotFound:
                current = None
            new = mutate(current)
            if new != current:
                self.put_bytes(key, new)
            return new

    def publish_dir(self, prefix: str, source: Path) -> None:
        """Copy ``source``'s files to staging, then rename the directory into place.

        A previous publication at ``prefix`` (an earlier attempt of the same job) is replaced.
        """
        target = self.path_of(prefix)
        staging = self.tmp_dir / self.staging_name("dir")
        staging.mkdir()
        try:
            for item in sorted(source.iterdir()):
                if item.is_file() and KEY_PATTERN.fullmatch(item.name):
                    shutil.copyfile(item, staging / item.name)
                    with open(staging / item.name, "rb") as handle:
                        os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(prefix):
                if target.exists():
                    old = self.tmp_dir / self.staging_name("old")
                    os.rename(target, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.rename(staging, target)
                _fsync_dir(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove the file or directory at ``prefix``."""
        path = self.path_of(prefix)
        if path.is_dir():
            old = self.tmp_dir / self.staging_name("old")
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, old)
            shutil.rmtree(old, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def list_children(self, prefix: str) -> list[str]:
        """Entry names directly under ``prefix``."""
        path = self.path_of(prefix)
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))

    def check_writable(self) -> None:
        """Write, read back and delete a probe object."""
        probe = f"health/{uuid.uuid4().hex}"
        self.put_bytes(probe, b"ok")
        if self.get_bytes(probe) != b"ok":
            raise OSError("store probe read back different bytes")
        self.delete_prefix(probe)

    def collect_garbage(self, max_age_s: float = STAGING_MAX_AGE_S) -> int:
        """Remove staging entries of dead processes, and untokened ones older than ``max_age_s``;
        returns how many."""
        cutoff = time.time() - max_age_s
        removed = 0
        alive: dict[str, bool] = {}
        for entry in self.tmp_dir.iterdir():
            owner = _OWNER.match(entry.name)
            with contextlib.suppress(FileNotFoundError):
                if owner is not None:
                    token = owner.group(1)
                    if token not in alive:
                        alive[token] = owner_alive(self.lock_dir, token)
                    if alive[token]:
                        continue
                elif entry.stat().st_mtime >= cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
        self._forget_dead_owners()
        return removed

    def _forget_dead_owners(self) -> None:
        # Only files older than a minute: a process creates its lock file and takes the lock at
        # once, so a younger unlocked one may be a process between those two steps.
        cutoff = time.time() - 60
        for lock in self.lock_dir.glob("owner-*"):
            token = lock.name.removeprefix("owner-")
            with contextlib.suppress(FileNotFoundError):
                if lock.stat().st_mtime < cutoff and not owner_alive(self.lock_dir, token):
                    lock.unlink()
