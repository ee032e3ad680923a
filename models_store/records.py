"""Records of truth: artifact metadata and job manifests, stored as JSON in the store.

Redis is transport only; the status a client sees comes from the job manifest here, so it
survives a Redis restart. Manifests are changed only through :meth:`Records.update_job`, a
read-modify-write under the store's lock, so the API (cancel) and a worker (progress) never lose
each other's writes.

Each tenant also has an index (``models_store/index.py``): listing a page of jobs, the jobs in
flight and a tenant's usage read it instead of every manifest. Its job entries are written from
the manifests: before a manifest is created (so a crash never hides a job), after every change of
status and after a deletion. A missing or unreadable index is rebuilt from the manifests, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from models_store.base import Store
from models_store.errors import NotFound
from models_store.index import INDEX_NAME, ArtifactEntry, JobEntry, TenantIndex, micros
from models_store.keys import is_valid_id, is_valid_tenant, object_key, object_prefix, tenant_prefix

__all__ = [
    "TERMINAL",
    "ArtifactRecord",
    "Handoff",
    "HandoffWarning",
    "IdempotencyEntry",
    "JobError",
    "JobPage",
    "JobRecord",
    "JobStatus",
    "NotificationAttempt",
    "Records",
    "TenantUsage",
    "request_digest",
    "utcnow",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
"""Statuses a job never leaves."""
ArtifactKind = Literal["models", "datasets"]
META = "meta.json"
JOB = "job.json"
OUTPUT_DIR = "output"
CREATE_GRACE_S = 60.0
"""An index entry without a manifest is kept this long (its manifest may be being created)."""
log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class ArtifactRecord(BaseModel):
    """An uploaded checkpoint or dataset."""

    id: str
    tenant: str
    kind: ArtifactKind
    data_name: str = Field(description="File name of the bytes under the artifact's prefix (ours).")
    format: Literal["safetensors", "parquet", "csv"]
    sha256: str
    size_bytes: int
    filename: str | None = Field(default=None, description="Client-side name; metadata only.")
    created_at: datetime
    architecture: dict[str, Any] | None = None
    dataset_schema: dict[str, Any] | None = None
    columns: list[str] | None = None
    feature_names: list[str] | None = None
    n_rows: int | None = None
    groups: dict[str, list[str]] | None = None


class JobError(BaseModel):
    """Why a job failed: a stable code and a message saying what to change."""

    code: str
    message: str


class HandoffWarning(BaseModel):
    """Why a hand-off was not done: a stable code and a message."""

    code: str
    message: str


class Handoff(BaseModel):
    """The outcome of handing a succeeded job's outputs to another system (workers/handoff/)."""

    status: Literal["registered", "failed", "skipped"]
    run_id: str | None = None
    experiment_id: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    warning: HandoffWarning | None = None
    finished_at: datetime | None = None
class NotificationAttempt(BaseModel):
    """One delivery attempt of a job's webhook event (workers/notify/dispatch.py)."""

    event_id: str = Field(description="The webhook-id header: the same for every attempt of one event.")
    type: str = Field(description="job.succeeded, job.failed or job.canceled.")
    url: str = Field(description="The notify URL without its query string.")
    attempt: int
    at: datetime
    status_code: int | None = Field(default=None, description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(default=None, description="Why the attempt failed, briefly.")
    delivered: bool = False
    next_attempt_at: datetime | None = Field(default=None, description="When the next retry is due; null: "
                                             "no more attempts (delivered, refused or given up).")


class JobRecord(BaseModel):
    """The manifest of one correction job (the record of truth)."""

    id: str
    tenant: str
    status: JobStatus = "queued"
    stage: str | None = None
    progress: float = 0.0
    error: JobError | None = None
    request: dict[str, Any]
    spec: dict[str, Any]
    queue: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    enqueues: int = 1
    cancel_requested: bool = False
    worker_pid: int | None = None
    device: str | None = None
    threads: int | None = Field(
        default=None, description="Intra-op threads of the work horse that ran the latest attempt.")
    request_hash: str
    enqueued_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    idempotency_key_sha256: str | None = Field(
        default=None, description="SHA-256 of the Idempotency-Key bound to this job (released on delete).")
    request_id: str | None = Field(
        default=None, description="X-Request-ID of the POST that created the job (in its log lines).")
    handoffs: dict[str, Handoff] = Field(default_factory=dict, description="Hand-off outcomes (mlflow).")
    notifications: list[NotificationAttempt] = Field(
        default_factory=list, description="Webhook delivery attempts, the latest last (capped).")

    @property
    def terminal(self) -> bool:
        """Whether the job has finished one way or another."""
        return self.status in TERMINAL


class IdempotencyEntry(BaseModel):
    """Maps a client's Idempotency-Key to the job it created."""

    job_id: str
    request_hash: str
    created_at: datetime


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant holds: bytes stored (uploads plus job outputs) and jobs queued or running."""

    stored_bytes: int
    jobs_in_flight: int


@dataclass(frozen=True)
class JobPage:
    """One page of a tenant's jobs (newest first) and how many jobs match in all."""

    items: list[JobRecord]
    total: int


def key_digest(idempotency_key: str) -> str:
    """The digest under which an Idempotency-Key is stored (never the key itself)."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()


class Records:
    """Typed access to artifact and job records in a :class:`Store`, and the tenant index."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- artifacts ---------------------------------------------------------------------------

    def put_artifact(self, record: ArtifactRecord) -> None:
        """Write an artifact's metadata (after its bytes are committed) and count its bytes."""
        def edit(index: TenantIndex) -> None:
            index.artifacts[record.id] = ArtifactEntry(record.kind, record.size_bytes, record.sha256)

        self._change_index(record.tenant, edit)
        key = object_key(record.tenant, record.kind, record.id, META)
        self.store.put_bytes(key, record.model_dump_json().encode())

    def data_key(self, record: ArtifactRecord) -> str:
        """Key of the artifact's bytes."""
        return object_key(record.tenant, record.kind, record.id, record.data_name)

    def get_artifact(self, tenant: str, kind: ArtifactKind, artifact_id: str) -> ArtifactRecord | None:
        """The artifact of ``tenant`` with that id and kind, or None (unknown, other tenant or kind)."""
        if not (is_valid_tenant(tenant) and is_valid_id(artifact_id)):
            return None
        try:
            raw = self.store.get_bytes(object_key(tenant, kind, artifact_id, META))
        except NotFound:
            return None
        return ArtifactRecord.model_validate_json(raw)

    def artifact_page(self, tenant: str, kind: ArtifactKind, limit: int, offset: int,
                      sha256: str | None = None) -> tuple[list[ArtifactRecord], int]:
        """One page of the tenant's artifacts of ``kind`` ordered by id (only those whose content
        has digest ``sha256`` when given), and how many match in all."""
        ids = self._read_index(tenant).artifact_ids(kind, sha256)
        if sha256 is None:
            page = [self.get_artifact(tenant, kind, one) for one in ids[offset: offset + limit]]
            return [found for found in page if found is not None], len(ids)
        matches = [found for artifact_id in ids
                   if (found := self.get_artifact(tenant, kind, artifact_id)) is not None
                   and found.sha256 == sha256]
        return matches[offset: offset + limit], len(matches)

    def delete_artifact(self, tenant: str, kind: ArtifactKind, artifact_id: str) -> bool:
        """Remove an artifact (metadata and bytes in one rename) and its bytes from the usage;
        returns whether there was one. Whether a job still needs it is the caller's question."""
        if self.get_artifact(tenant, kind, artifact_id) is None:
            return False
        self.store.delete_prefix(object_prefix(tenant, kind, artifact_id))
        self._change_index(tenant, lambda index: index.artifacts.pop(artifact_id, None))
        return True

    # -- jobs --------------------------------------------------------------------------------

    def job_key(self, tenant: str, job_id: str) -> str:
        """Key of a job's manifest."""
        return object_key(tenant, "jobs", job_id, JOB)

    def output_prefix(self, tenant: str, job_id: str) -> str:
        """Prefix under which a job's outputs are published."""
        return f"{object_prefix(tenant, 'jobs', job_id)}/{OUTPUT_DIR}"

    def output_key(self, tenant: str, job_id: str, name: str) -> str:
        """Key of one published output of a job."""
        return f"{self.output_prefix(tenant, job_id)}/{name}"

    def create_job(self, record: JobRecord) -> bool:
        """Write a new manifest, atomically and only if none exists under its id; returns whether
        this call created it (False: another request bound to the same id got there first).

        The index entry is written first, so a crash in between leaves an entry without a
        manifest (skipped, then dropped), never a job missing from listings."""
        entry = JobEntry(record.id, micros(record.created_at), record.status)
        self._change_index(record.tenant, lambda index: index.put_job(entry))
        created = self.store.create_exclusive(self.job_key(record.tenant, record.id),
                                              record.model_dump_json().encode())
        if not created:
            self.sync_job_entry(record.tenant, record.id)
        return created

    def get_job(self, tenant: str, job_id: str) -> JobRecord | None:
        """The job of ``tenant`` with that id, or None."""
        if not (is_valid_tenant(tenant) and is_valid_id(job_id)):
            return None
        try:
            return JobRecord.model_validate_json(self.store.get_bytes(self.job_key(tenant, job_id)))
        except NotFound:
            return None

    def update_job(
        self, tenant: str, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> JobRecord:
        """Apply ``change`` to the manifest under the lock; ``change`` returns None to leave it.
        A change of status is then written to the index.

        Raises:
            NotFound: no such job.
        """
        before: list[str] = []

        def mutate(current: bytes | None) -> bytes:
            if current is None:
                raise NotFound(job_id)
            record = JobRecord.model_validate_json(current)
            before.append(record.status)
            changed = change(record.model_copy(deep=True))
            if changed is None:
                return current
            changed.updated_at = utcnow()
            return changed.model_dump_json().encode()

        updated = JobRecord.model_validate_json(self.store.update(self.job_key(tenant, job_id), mutate))
        if before and before[-1] != updated.status:
            self.sync_job_entry(tenant, job_id)
        return updated

    def delete_job(self, tenant: str, job_id: str) -> bool:
        """Remove a job: its Idempotency-Key binding, then its manifest and outputs (one rename),
        then its index entry; returns whether there was one. Whether the job may go (it must be
        terminal) is the caller's question."""
        record = self.get_job(tenant, job_id)
        if record is None:
            return False
        self._release_bindings_of(record)
        self.store.delete_prefix(object_prefix(tenant, "jobs", job_id))
        self.sync_job_entry(tenant, job_id, forget_missing=True)
        return True

    def list_jobs(self, tenant: str) -> list[JobRecord]:
        """Every job of ``tenant``, newest first (reads every manifest: prefer :meth:`job_page`)."""
        return self._manifests(tenant, self._read_index(tenant).jobs(), None)

    def job_page(self, tenant: str, limit: int, offset: int, status: str | None = None) -> JobPage:
        """Jobs ``offset`` to ``offset + limit`` of ``tenant``, newest first, optionally only those
        with ``status``; reads the index and the page's manifests only."""
        entries, total = self._read_index(tenant).page(offset, limit, status)
        return JobPage(self._manifests(tenant, entries, status), total)

    def in_flight_jobs(self, tenant: str) -> list[JobRecord]:
        """The manifests of the tenant's queued and running jobs, newest first."""
        entries = self._read_index(tenant).jobs(in_flight=True)
        return [job for job in self._manifests(tenant, entries, None) if not job.terminal]

    def tenant_usage(self, tenant: str) -> TenantUsage:
        """Bytes stored (uploads plus published job outputs) and jobs in flight, from the index."""
        index = self._read_index(tenant)
        return TenantUsage(stored_bytes=index.stored_bytes(), jobs_in_flight=index.jobs_in_flight())

    def tenants(self) -> list[str]:
        """Every tenant with stored objects."""
        return [name for name in self.store.list_children("t") if is_valid_tenant(name)]

    # -- idempotency -------------------------------------------------------------------------

    def _binding_key(self, tenant: str, digest: str) -> str:
        return object_key(tenant, "idempotency", digest, "entry.json")

    def claim_idempotency_key(
        self, tenant: str, idempotency_key: str, entry: IdempotencyEntry
    ) -> IdempotencyEntry:
        """Bind ``idempotency_key`` to ``entry`` unless already bound; returns the binding in force."""
        key = self._binding_key(tenant, key_digest(idempotency_key))
        if self.store.create_exclusive(key, entry.model_dump_json().encode()):
            return entry
        return IdempotencyEntry.model_validate_json(self.store.get_bytes(key))

    def idempotency_binding(self, tenant: str, idempotency_key: str) -> IdempotencyEntry | None:
        """The binding of ``idempotency_key`` in force, or None."""
        try:
            raw = self.store.get_bytes(self._binding_key(tenant, key_digest(idempotency_key)))
        except NotFound:
            return None
        return IdempotencyEntry.model_validate_json(raw)

    def release_idempotency_key(self, tenant: str, idempotency_key: str) -> None:
        """Forget a binding (used when the job it names could not be enqueued)."""
        self.store.delete_prefix(object_prefix(tenant, "idempotency", key_digest(idempotency_key)))

    def _release_bindings_of(self, record: JobRecord) -> None:
        """Forget the bindings naming ``record`` (a job from before the digest was kept in its
        manifest: found by reading the tenant's bindings)."""
        root = f"{tenant_prefix(record.tenant)}/idempotency"
        digests = ([record.idempotency_key_sha256] if record.idempotency_key_sha256
                   else self.store.list_children(root))
        for digest in digests:
            try:
                bound = IdempotencyEntry.model_validate_json(
                    self.store.get_bytes(self._binding_key(record.tenant, digest)))
            except (NotFound, ValueError):
                continue
            if bound.job_id == record.id:
                self.store.delete_prefix(object_prefix(record.tenant, "idempotency", digest))

    # -- the index ---------------------------------------------------------------------------

    def index_key(self, tenant: str) -> str:
        """Key of the tenant's index."""
        return f"{tenant_prefix(tenant)}/{INDEX_NAME}"

    def sync_job_entry(self, tenant: str, job_id: str, forget_missing: bool = False) -> None:
        """Write the index entry of a job from its manifest, under the index lock (so of two
        writers the later one reads the later manifest). Without a manifest the entry is dropped
        when ``forget_missing`` or when older than :data:`CREATE_GRACE_S`."""

        def edit(index: TenantIndex) -> None:
            record = self.get_job(tenant, job_id)
            if record is not None:
                index.put_job(self._job_entry(record))
                return
            entry = index.job(job_id)
            age_s = (micros(utcnow()) - entry.created_us) / 1e6 if entry else 0.0
            if forget_missing or age_s > CREATE_GRACE_S:
                index.drop_job(job_id)

        self._change_index(tenant, edit)

    def _job_entry(self, record: JobRecord) -> JobEntry:
        output_bytes = 0
        if record.status == "succeeded":
            prefix = self.output_prefix(record.tenant, record.id)
            for name in self.store.list_children(prefix):
                try:
                    output_bytes += self.store.size(f"{prefix}/{name}")
                except NotFound:
                    continue
        return JobEntry(record.id, micros(record.created_at), record.status, output_bytes)

    def _manifests(self, tenant: str, entries: list[JobEntry], status: str | None) -> list[JobRecord]:
        """The manifests of ``entries`` (in order); an entry disagreeing with its manifest is
        re-synced, and a job whose manifest no longer has ``status`` is left out."""
        found = []
        for entry in entries:
            record = self.get_job(tenant, entry.id)
            if record is None or record.status != entry.status:
                self.sync_job_entry(tenant, entry.id)
            if record is not None and (status is None or record.status == status):
                found.append(record)
        return found

    def _read_index(self, tenant: str) -> TenantIndex:
        try:
            return TenantIndex.from_bytes(self.store.get_bytes(self.index_key(tenant)))
        except NotFound:
            if not self.store.list_children(tenant_prefix(tenant)):
                return TenantIndex()  # a tenant with nothing stored: reading writes nothing either
        except ValueError as exc:
            log.warning("the index of tenant %s is unreadable (%s); rebuilding it", tenant, exc)
        return self._change_index(tenant, lambda index: None)

    def _change_index(self, tenant: str, edit: Callable[[TenantIndex], object]) -> TenantIndex:
        """Apply ``edit`` to the tenant's index under its lock (rebuilt first when missing)."""
        result: list[TenantIndex] = []

        def mutate(current: bytes | None) -> bytes:
            index = None
            if current is not None:
                try:
                    index = TenantIndex.from_bytes(current)
                except ValueError:
                    index = None
            if index is None:
                index = self._rebuild_index(tenant)
            edit(index)
            result.append(index)
            return index.to_bytes()

        self.store.update(self.index_key(tenant), mutate)
        return result[-1]

    def _rebuild_index(self, tenant: str) -> TenantIndex:
        """The index from every manifest and artifact record (stores from before the index)."""
        root = tenant_prefix(tenant)
        index = TenantIndex()
        for kind in ("models", "datasets"):
            for artifact_id in self.store.list_children(f"{root}/{kind}"):
                found = self.get_artifact(tenant, kind, artifact_id)  # type: ignore[arg-type]
                if found is not None:
                    index.artifacts[found.id] = ArtifactEntry(kind, found.size_bytes, found.sha256)
        jobs = []
        for job_id in self.store.list_children(f"{root}/jobs"):
            record = self.get_job(tenant, job_id)
            if record is not None:
                jobs.append(self._job_entry(record))
        index.set_jobs(jobs)
        if jobs or index.artifacts:
            log.info("rebuilt the index of tenant %s from %d job manifests", tenant, len(jobs))
        return index


def request_digest(body: dict[str, Any]) -> str:
    """A stable hash of a JSON request body (key order does not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
