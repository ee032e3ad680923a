"""Deleting uploads and jobs (``DELETE /v1/models/{id}``, ``/v1/datasets/{id}``, ``/v1/jobs/{id}``).

A job may go once it has ended (a queued or running one is canceled first), and its outputs go
with it. An upload may go unless a queued or running job still needs it; a finished job's report
keeps the sha256 of what it used. Each deletion is one rename of the object's directory (readers
see it whole or not at all), then the tenant index is updated. Deleting a job also frees the
Idempotency-Key that created it: the same POST with that key afterwards makes a new job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from app.errors import ApiError
from app.metrics import Metrics
from app.services.jobs import get_job
from models_store import Records
from models_store.records import JobRecord
from workers.settings import ServiceSettings

__all__ = ["counted", "delete_artifact", "delete_job"]

log = logging.getLogger(__name__)
ARTIFACT_FIELDS = ("model_id", "train_dataset_id", "audit_dataset_id", "eval_dataset_id")
MAX_JOBS_NAMED = 10


def _users(records: Records, tenant: str, artifact_id: str) -> list[JobRecord]:
    """The tenant's queued or running jobs that name ``artifact_id``."""
    return [job for job in records.in_flight_jobs(tenant)
            if artifact_id in (job.request.get(field) for field in ARTIFACT_FIELDS)]


def delete_artifact(records: Records, tenant: str, kind: Literal["models", "datasets"],
                    artifact_id: str) -> None:
    """Delete a model or dataset of ``tenant``.

    Raises:
        ApiError: 404 unknown id or another tenant's; 409 ``artifact_in_use`` while a queued or
            running job needs it (naming the jobs).
    """
    noun = kind[:-1]
    if records.get_artifact(tenant, kind, artifact_id) is None:
        raise ApiError(404, "not_found", f"no {noun} {artifact_id[:40]}")
    users = _users(records, tenant, artifact_id)
    if users:
        named = ", ".join(f"{job.id} ({job.status})" for job in users[:MAX_JOBS_NAMED])
        raise ApiError(409, "artifact_in_use", f"the {noun} is used by job {named}; wait for the job "
                       f"to finish or cancel it, then delete the {noun}",
                       extra={"job_ids": [job.id for job in users]})
    records.delete_artifact(tenant, kind, artifact_id)


def delete_job(records: Records, redis: Redis, settings: ServiceSettings, tenant: str, job_id: str) -> None:
    """Delete a finished job of ``tenant`` with its outputs.

    Raises:
        ApiError: 404 unknown id or another tenant's; 409 ``job_not_finished`` while it is queued
            or running.
    """
    record = get_job(records, redis, settings, tenant, job_id)
    if not record.terminal:
        raise ApiError(409, "job_not_finished", f"the job is {record.status}; cancel it first "
                       f"(POST /v1/jobs/{record.id}/cancel), then delete it once it is canceled",
                       extra={"job_status": record.status})
    records.delete_job(tenant, job_id)
    try:
        Job.fetch(job_id, connection=redis, serializer=JSONSerializer).delete()
    except NoSuchJobError:
        pass
    except RedisError as exc:  # RQ's copy of a finished job expires with its TTL anyway
        log.warning("could not remove RQ's record of deleted job %s: %s", job_id, exc)


def counted(metrics: Metrics, kind: str, delete: Callable[[], None]) -> None:
    """Run ``delete``, counting it as ``deleted`` or by its error code (``kind``: model, dataset, job)."""
    try:
        delete()
    except ApiError as exc:
        metrics.deletions.labels(kind, exc.code).inc()
        raise
    metrics.deletions.labels(kind, "deleted").inc()
