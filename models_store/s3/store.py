"""The S3-compatible store: objects in a bucket under a key prefix, manifests changed by
conditional writes.

* Streamed writes are staged in a local temporary file (hashed as they stream in, so validation
  can read ``path``), then uploaded by boto3's transfer manager: multipart past
  :data:`MULTIPART_BYTES`. A completed PUT or multipart upload is atomic at its key, so a reader
  never sees a partial object.
* :meth:`S3Store.update` is optimistic: GET (with its ETag), ``mutate``, PUT with ``If-Match``
  (``If-None-Match: *`` when the key was absent); a 412/409 answer means another writer got in
  between, so it re-reads and retries, with jittered backoff, up to :data:`UPDATE_ATTEMPTS`
  times. ``mutate`` may therefore run more than once; only its last result is written.
  :meth:`S3Store.create_exclusive` is one ``If-None-Match: *`` PUT. Any number of API replicas
  and workers on any number of hosts can share a bucket this way: the server decides each race.
* ``publish_dir`` uploads each file (each atomic) and then removes what an earlier publication
  left that the new one lacks; the set is not atomic as a whole: the job manifest written after
  it is the commit point. ``delete_prefix`` removes the objects of a prefix in batched DELETEs,
  the ones directly under the prefix (a record and its bytes) in the first request.
* ``free_bytes``/``check_room`` are about the local staging disk (every write passes there);
  a bucket's capacity is the provider's.
"""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from models_store.errors import InvalidKey, NotFound, StoreUnavailable
from models_store.keys import KEY_PATTERN
from models_store.local import owner_alive, owner_token
from models_store.s3.location import S3Location, client_for, error_code, translate
from models_store.staging import StagingFile, discard_unless_committed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3StagedObject", "S3Store"]

MULTIPART_BYTES = 16 * 1024 * 1024
"""Objects from this size on are uploaded (and downloaded) in parts of this size, 4 at a time."""
UPDATE_ATTEMPTS = 40
"""Conditional writes one :meth:`S3Store.update` tries before giving up (StoreUnavailable)."""
BACKOFF_BASE_S = 0.01
BACKOFF_CAP_S = 0.5
STAGING_MAX_AGE_S = 24 * 3600
"""Multipart uploads older than this are aborted by :meth:`S3Store.collect_garbage` (a process
that died mid-upload leaves one; a live upload on another host cannot be told apart sooner)."""
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_STREAM_RETRIES = 3
_TRANSFER = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                           max_concurrency=4)


def default_staging_dir() -> Path:
    """Local staging of every S3 store of this host: ``$TMPDIR/softunlearn-s3``."""
    return Path(tempfile.gettempdir()) / "softunlearn-s3"


def _conflict(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in CONFLICT_CODES or status in (409, 412)


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)))


class S3StagedObject(StagingFile):
    """A streamed write into a local staging file, uploaded to the bucket by :meth:`commit`."""

    def __init__(self, store: S3Store, max_bytes: int | None) -> None:
        super().__init__(store.staging_dir / store.staging_name("stage"), max_bytes)
        self._store = store

    def commit(self, key: str) -> None:
        """Upload the staged bytes to ``key`` (multipart when large); atomic at the key."""
        self._handle.close()
        self._store.upload(self._path, key)
        self.committed = True
        self.discard()


class S3Store:
    """Artifacts in an S3-compatible bucket (see the module's docstring for the semantics)."""

    def __init__(self, location: S3Location, min_free_bytes: int = 0, staging_dir: Path | None = None,
                 client: S3Client | None = None, transfer: TransferConfig | None = None) -> None:
        self.location = location
        self.transfer = transfer or _TRANSFER
        self.client = client or client_for(location.endpoint_url)
        self.min_free_bytes = min_free_bytes
        self.staging_dir = staging_dir or default_staging_dir()
        self.lock_dir = self.staging_dir / ".locks"
        self.lock_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"S3Store({str(self.location)!r})"

    # -- helpers -----------------------------------------------------------------------------

    def name_of(self, key: str) -> str:
        """The S3 object name of ``key``.

        Raises:
            InvalidKey: the key is not in the key grammar.
        """
        if not KEY_PATTERN.fullmatch(key) or len(key) > 512:
            raise InvalidKey(f"invalid key {key[:80]!r}")
        return self.location.object_name(key)

    def staging_name(self, kind: str) -> str:
        """A fresh local staging name carrying this process's owner token."""
        return f"{kind}-{owner_token(self.lock_dir)}-{uuid.uuid4().hex}"

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, self.location, key) from exc

    def upload(self, path: Path, key: str) -> None:
        """Upload the file ``path`` to ``key`` (multipart from :data:`MULTIPART_BYTES`)."""
        name = self.name_of(key)
        with self._errors(key):
            self.client.upload_file(str(path), self.location.bucket, name, Config=self.transfer)

    def _get(self, key: str, **extra: Any) -> Any:
        with self._errors(key):
            return self.client.get_object(Bucket=self.location.bucket, Key=self.name_of(key), **extra)

    def _names_under(self, prefix: str) -> Iterator[str]:
        """Every object name under ``prefix/`` (paged)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.name_of(prefix) + "/")
        with self._errors(prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"]

    def _delete_names(self, names: list[str], key: str) -> None:
        for start in range(0, len(names), 1000):
            batch = [{"Key": name} for name in names[start: start + 1000]]
            with self._errors(key):
                answer = self.client.delete_objects(Bucket=self.location.bucket,
                                                    Delete={"Objects": batch, "Quiet": True})  # type: ignore[typeddict-item]
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise StoreUnavailable(f"the S3 store could not delete {len(failed)} objects under "
                                       f"{key[:80]!r} ({failed[0].get('Code')})")

    # -- the Store protocol ------------------------------------------------------------------

    def stage(self, max_bytes: int | None = None) -> contextlib.AbstractContextManager[S3StagedObject]:
        """Start a streamed write; discarded on exit unless committed."""
        return discard_unless_committed(S3StagedObject(self, max_bytes))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` (one PUT: atomic)."""
        name = self.name_of(key)
        with self._errors(key):
            self.client.put_object(Bucket=self.location.bucket, Key=name, Body=data)

    def get_bytes(self, key: str) -> bytes:
        """Read the object at ``key``."""
        body = self._get(key)["Body"]
        with self._errors(key), contextlib.closing(body):
            data: bytes = body.read()
            return data

    def _head(self, key: str) -> Any:
        with self._errors(key):
            return self.client.head_object(Bucket=self.location.bucket, Key=self.name_of(key))

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """Size of the object at ``key``."""
        return int(self._head(key)["ContentLength"])

    def open_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object at ``key`` from one streaming GET (sent eagerly, so NotFound is raised
        here); a connection cut mid-way resumes with a ranged GET of the same version (If-Match)."""
        answer = self._get(key)
        etag = answer["ETag"]

        def chunks() -> Iterator[bytes]:
            body, offset, retries = answer["Body"], 0, 0
            while True:
                try:
                    with contextlib.closing(body):
                        for block in body.iter_chunks(chunk_size):
                            offset += len(block)
                            yield block
                    return
                except (BotoCoreError, OSError):
                    retries += 1
                    if retries > _STREAM_RETRIES:
                        raise
                    body = self._get(key, Range=f"bytes={offset}-", IfMatch=etag)["Body"]

        return chunks()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local copy of the object (ranged GETs in parallel when large), removed afterwards."""
        name = self.name_of(key)
        path = self.staging_dir / self.staging_name("get")
        try:
            with self._errors(key):
                self.client.download_file(self.location.bucket, name, str(path), Config=self.transfer)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _put_if(self, key: str, data: bytes, etag: str | None) -> bool:
        """PUT ``data`` only if the object still has ``etag`` (None: only if absent); False when
        another writer got in first."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=self.name_of(key), Body=data,
                                   **condition)  # type: ignore[arg-type]
        except ClientError as exc:
            # 404: the object read was deleted since (If-Match on nothing): re-read, like a 412.
            if _conflict(exc) or (etag is not None and error_code(exc) in ("NoSuchKey", "404")):
                return False
            raise translate(exc, self.location, key) from exc
        except BotoCoreError as exc:
            raise translate(exc, self.location, key) from exc
        return True

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless something is there (``If-None-Match: *``)."""
        for attempt in range(UPDATE_ATTEMPTS):
            if self._put_if(key, data, None):
                return True
            if self.exists(key):
                return False
            _backoff(attempt)  # 409: a concurrent conditional write was in flight; it may have failed
        raise StoreUnavailable(f"could not create {key[:80]!r}: {UPDATE_ATTEMPTS} conflicting writes")

    def _read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            answer = self._get(key)
        except NotFound:
            return None, None
        with self._errors(key), contextlib.closing(answer["Body"]):
            return answer["Body"].read(), str(answer["ETag"])

    def update(self, key: str, mutate: Callable[[bytes | None], bytes]) -> bytes:
        """Read-modify-write ``key`` by conditional PUTs; ``mutate`` may run more than once (on a
        lost race it gets the newer bytes), so it must not have side effects beyond its result.

        Raises:
            StoreUnavailable: every one of :data:`UPDATE_ATTEMPTS` attempts lost its race.
        """
        for attempt in range(UPDATE_ATTEMPTS):
            current, etag = self._read_versioned(key)
            new = mutate(current)
            if new == current or self._put_if(key, new, etag):
                return new
            _backoff(attempt)
        raise StoreUnavailable(f"could not update {key[:80]!r}: other writers got in first "
                               f"{UPDATE_ATTEMPTS} times in a row")

    def publish_dir(self, prefix: str, source: Path) -> None:
        """Upload ``source``'s regular files under ``prefix``, then remove the objects an earlier
        publication left there that this one does not have."""
        names = sorted(item.name for item in source.iterdir()
                       if item.is_file() and KEY_PATTERN.fullmatch(item.name))
        before = set(self._names_under(prefix))
        for name in names:
            self.upload(source / name, f"{prefix}/{name}")
        fresh = {self.name_of(f"{prefix}/{name}") for name in names}
        self._delete_names(sorted(before - fresh), prefix)

    def delete_prefix(self, prefix: str) -> None:
        """Remove the object at ``prefix`` and every object under ``prefix/``: the ones directly
        under it first, in one request (a record goes with its bytes)."""
        own = self.name_of(prefix)
        depth = own.count("/") + 1
        names = sorted(self._names_under(prefix), key=lambda n: (n.count("/") > depth, n))
        self._delete_names([own, *names], prefix)

    def list_children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (objects and sub-prefixes)."""
        start = self.name_of(prefix) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=start, Delimiter="/")
        found: set[str] = set()
        with self._errors(prefix):
            for page in pages:
                found.update(item["Key"][len(start):] for item in page.get("Contents", []))
                found.update(p["Prefix"][len(start):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(name for name in found if name and not name.startswith("."))

    def check_writable(self) -> None:
        """Write, read back and delete a probe object (StoreUnavailable says what is wrong)."""
        probe = f"health/{uuid.uuid4().hex}"
        self.put_bytes(probe, b"ok")
        if self.get_bytes(probe) != b"ok":
            raise OSError("store probe read back different bytes")
        self.delete_prefix(probe)

    def free_bytes(self) -> int:
        """Free space of the local staging disk (every upload and download passes there)."""
        return shutil.disk_usage(self.staging_dir).free

    def check_room(self, incoming_bytes: int = 0) -> None:
        """Refuse a write of ``incoming_bytes`` that would leave the staging disk below
        ``min_free_bytes``.

        Raises:
            OSError: ``ENOSPC``, as a full disk would.
        """
        if self.free_bytes() - incoming_bytes < self.min_free_bytes:
            raise OSError(errno.ENOSPC, "the store's staging disk is below its free-space floor")

    def collect_garbage(self, max_age_s: float = STAGING_MAX_AGE_S) -> int:
        """Remove local staging files of dead processes of this host, and abort multipart uploads
        under the prefix started more than ``max_age_s`` ago; returns how many."""
        removed = 0
        alive: dict[str, bool] = {}
        for entry in self.staging_dir.iterdir():
            parts = entry.name.split("-")
            if len(parts) != 3 or parts[0] not in ("stage", "get"):
                continue
            if parts[1] not in alive:
                alive[parts[1]] = owner_alive(self.lock_dir, parts[1])
            if not alive[parts[1]]:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed + self._abort_stale_uploads(max_age_s)

    def _abort_stale_uploads(self, max_age_s: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age_s)
        aborted = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.location.bucket, Prefix=self.location.object_name(""))
        with self._errors("uploads"):
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(Bucket=self.location.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        return aborted


def open_s3_store(url: str, endpoint_url: str | None = None, min_free_bytes: int = 0) -> S3Store:
    """The S3 store of ``s3://bucket/prefix`` (see :func:`models_store.s3.location.parse_s3_url`)."""
    from models_store.s3.location import parse_s3_url

    return S3Store(parse_s3_url(url, endpoint_url), min_free_bytes=min_free_bytes)
