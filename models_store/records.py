"""Records of truth: artifact metadata and job manifests, stored as JSON in the store.

Redis is transport only; the status a client sees comes from the job manifest here, so it
survives a Redis restart. Manifests are changed only through :meth:`Records.update_job`, a
read-modify-write under the store's lock, so the API (cancel) and a worker (progress) never lose
each other's writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from models_store.base import Store
from models_store.errors import NotFound
from models_store.keys import is_valid_id, is_valid_tenant, object_key, object_prefix, tenant_prefix

__all__ = [
    "TERMINAL",
    "ArtifactRecord",
    "IdempotencyEntry",
    "JobError",
    "JobRecord",
    "JobStatus",
    "Records",
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
    request_hash: str
    enqueued_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """Whether the job has finished one way or another."""
        return self.status in TERMINAL


class IdempotencyEntry(BaseModel):
    """Maps a client's Idempotency-Key to the job it created."""

    job_id: str
    request_hash: str
    created_at: datetime


def _key_digest(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()


class Records:
    """Typed access to artifact and job records in a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put_artifact(self, record: ArtifactRecord) -> None:
        """Write an artifact's metadata (after its bytes are committed)."""
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
        this call created it (False: another request bound to the same id got there first)."""
        return self.store.create_exclusive(self.job_key(record.tenant, record.id),
                                           record.model_dump_json().encode())

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

        Raises:
            NotFound: no such job.
        """

        def mutate(current: bytes | None) -> bytes:
            if current is None:
                raise NotFound(job_id)
            record = JobRecord.model_validate_json(current)
            changed = change(record.model_copy(deep=True))
            if changed is None:
                return current
            changed.updated_at = utcnow()
            return changed.model_dump_json().encode()

        return JobRecord.model_validate_json(self.store.update(self.job_key(tenant, job_id), mutate))

    def list_jobs(self, tenant: str) -> list[JobRecord]:
        """Every job of ``tenant``, newest first."""
        jobs = []
        for job_id in self.store.list_children(f"{tenant_prefix(tenant)}/jobs"):
            record = self.get_job(tenant, job_id)
            if record is not None:
                jobs.append(record)
        jobs.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        return jobs

    def tenants(self) -> list[str]:
        """Every tenant with stored objects."""
        return [name for name in self.store.list_children("t") if is_valid_tenant(name)]

    def claim_idempotency_key(
        self, tenant: str, idempotency_key: str, entry: IdempotencyEntry
    ) -> IdempotencyEntry:
        """Bind ``idempotency_key`` to ``entry`` unless already bound; returns the binding in force."""
        key = object_key(tenant, "idempotency", _key_digest(idempotency_key), "entry.json")
        if self.store.create_exclusive(key, entry.model_dump_json().encode()):
            return entry
        return IdempotencyEntry.model_validate_json(self.store.get_bytes(key))

    def release_idempotency_key(self, tenant: str, idempotency_key: str) -> None:
        """Forget a binding (used when the job it names could not be enqueued)."""
        self.store.delete_prefix(object_prefix(tenant, "idempotency", _key_digest(idempotency_key)))


def request_digest(body: dict[str, Any]) -> str:
    """A stable hash of a JSON request body (key order does not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class TenantUsage(BaseModel):
    """PROVISIONAL (replaced by the index-based one at merge)."""

    stored_bytes: int = 0
    jobs_in_flight: int = 0


def _provisional_usage(self: Records, tenant: str) -> TenantUsage:
    jobs = self.list_jobs(tenant)
    return TenantUsage(stored_bytes=0, jobs_in_flight=sum(1 for j in jobs if not j.terminal))


Records.tenant_usage = _provisional_usage  # type: ignore[attr-defined]
