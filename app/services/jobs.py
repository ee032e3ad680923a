"""Correction jobs: submission checks, idempotency, status, cancellation, outputs.

Everything that can be checked without the engine's numerics is checked here, so a wrong job is
a 422 naming the field at submission, not a failure discovered later by a worker.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from app.errors import ApiError
from app.quotas import check_job_quota
from app.schemas import (
    SPEC_PARTS,
    FrontierPublic,
    HandoffPublic,
    JobCreate,
    JobErrorPublic,
    JobList,
    JobPublic,
    NotificationPublic,
)
from models_store import ArtifactRecord, JobRecord, Records
from models_store.keys import new_id
from models_store.records import IdempotencyEntry, key_digest, request_digest, utcnow
from workers import job_events, logs
from workers.engine.config import CorrectionSpec, check_compatibility, spec_from_dict
from workers.engine.errors import InputError
from workers.engine.io.architecture import parse_arch
from workers.engine.io.datasets import parse_schema, resolve_features
from workers.handoff.config import MlflowRefused, resolve_mlflow_target
from workers.notify.dispatch import notify_terminal
from workers.notify.keys import NOT_CONFIGURED, tenant_secrets
from workers.notify.urls import UrlPolicy, UrlRefused, resolve_target
from workers.queue import cancel_rq_job, enqueue_correction
from workers.reconcile import reconcile_job
from workers.redact import redact_paths
from workers.settings import ServiceSettings

__all__ = ["cancel_job", "get_job", "job_public", "list_jobs", "output_key", "submit_job"]

log = logging.getLogger(__name__)
DATASET_FIELDS = ("train_dataset_id", "audit_dataset_id", "eval_dataset_id")
MAX_IDEMPOTENCY_KEY = 255
OUTPUTS = {"model": "model.safetensors", "report": "report.json", "report_html": "report.html",
           "weights": "weights.parquet"}


def _invalid(field: str, message: str) -> ApiError:
    errors = [{"field": field, "message": message}]
    return ApiError(422, "validation_error", f"{field}: {message}", errors=errors)


def _artifact(records: Records, tenant: str, field: str, kind: str, artifact_id: str) -> ArtifactRecord:
    found = records.get_artifact(tenant, kind, artifact_id)  # type: ignore[arg-type]
    if found is not None:
        return found
    other = "datasets" if kind == "models" else "models"
    if records.get_artifact(tenant, other, artifact_id) is not None:  # type: ignore[arg-type]
        raise _invalid(field, f"{artifact_id} is a {other[:-1]}, not a {kind[:-1]}")
    raise _invalid(field, f"no {kind[:-1]} with id {artifact_id}; upload it first")


def _spec(body: JobCreate) -> CorrectionSpec:
    raw = body.model_dump(mode="json", include=set(SPEC_PARTS), exclude_none=True)
    try:
        return spec_from_dict(raw)
    except ValueError as exc:
        message = str(exc).removeprefix("spec.")
        raise _invalid(message.split(" ")[0].rstrip(":"), message) from exc


def _check_dataset(field: str, dataset: ArtifactRecord, spec: CorrectionSpec,
                   in_features: int | None) -> None:
    schema = parse_schema(dataset.dataset_schema)
    column = spec.objective.sensitive_attribute
    if column is not None and column not in schema.sensitive:
        raise _invalid("objective.sensitive_attribute", f"{column!r} is not a sensitive column of "
                       f"{field} {dataset.id} (its schema lists {list(schema.sensitive)})")
    try:
        features = resolve_features(dataset.columns or [], schema)
    except InputError as exc:
        raise _invalid(field, str(exc)) from exc
    if in_features is None:  # images (cnn, resnet): the worker checks the images' shape against input_shape
        return
    widths = {len(features), len(features) + len(schema.sensitive) if schema.features is None else -1}
    if in_features not in widths:
        raise _invalid(field, f"the model takes {in_features} input features but dataset {dataset.id} "
                       f"has {len(features)} feature columns; upload it with schema.features naming them")


def _check_caps(spec: CorrectionSpec, settings: ServiceSettings) -> None:
    """422 for a spec knob past the operator's cap (each costs worker time or memory)."""
    resolved = spec.to_dict()
    for path, cap in settings.spec_caps().items():
        value: Any = resolved
        for part in path.split("."):
            value = value[part]
        if value > cap:
            message = f"{value:g} is over this service's limit of {cap:g} (operator setting)"
            raise ApiError(422, "limit_exceeded", f"{path}: {message}",
                           errors=[{"field": path, "message": message}])


def _check_notify(body: JobCreate, settings: ServiceSettings, tenant: str) -> None:
    """422 for a notify URL the operator's policy refuses, or when the tenant has no secret."""
    if body.notify is None:
        return
    if not tenant_secrets(settings, tenant):
        raise ApiError(422, "webhook_not_configured", NOT_CONFIGURED,
                       errors=[{"field": "notify.url", "message": NOT_CONFIGURED}])
    try:
        resolve_target(body.notify.url, UrlPolicy.from_settings(settings))
    except UrlRefused as exc:
        message = f"this URL is refused: {exc}"
        raise ApiError(422, "notify_url_refused", f"notify.url: {message}",
                       errors=[{"field": "notify.url", "message": message}]) from exc


def _validate(records: Records, tenant: str, body: JobCreate, settings: ServiceSettings) -> CorrectionSpec:
    spec = _spec(body)
    _check_caps(spec, settings)
    try:
        resolve_mlflow_target(body.mlflow, tenant, settings)
    except MlflowRefused as exc:
        raise _invalid(exc.field, exc.message) from exc
    _check_notify(body, settings, tenant)
    model = _artifact(records, tenant, "model_id", "models", body.model_id)
    arch = parse_arch(model.architecture)
    in_features = arch.in_features if arch.image_shape is None else None
    try:
        check_compatibility(spec, len(arch.trainable_units), arch.unit_description)
    except ValueError as exc:
        first = str(exc).split(" ")[0]
        raise _invalid(first if "." in first else "method", str(exc)) from exc
    datasets: dict[str, ArtifactRecord] = {}
    for field in DATASET_FIELDS:
        artifact_id = getattr(body, field)
        if artifact_id is not None:
            datasets[field] = _artifact(records, tenant, field, "datasets", artifact_id)
            _check_dataset(field, datasets[field], spec, in_features)
    reference = datasets["train_dataset_id"].feature_names
    for field, dataset in datasets.items():
        if dataset.feature_names != reference:
            raise _invalid(field, "its feature columns differ from the train dataset's (names and order)")
    return spec


def job_public(record: JobRecord) -> JobPublic:
    """The API view of a manifest."""
    base = f"/v1/jobs/{record.id}"
    links = {"self": base, "cancel": f"{base}/cancel"}
    if record.status == "succeeded":
        links |= {"report": f"{base}/report", "report_html": f"{base}/report.html", "model": f"{base}/model",
                  "frontier": f"{base}/frontier", "weights": f"{base}/weights"}
    request = record.request
    return JobPublic(
        id=record.id, status=record.status, stage=record.stage, progress=record.progress,
        error=JobErrorPublic(code=record.error.code, message=redact_paths(record.error.message))
        if record.error else None,
        cancel_requested=record.cancel_requested, attempts=record.attempts, queue=record.queue,
        device=record.device, threads=record.threads, model_id=request["model_id"],
        train_dataset_id=request["train_dataset_id"], audit_dataset_id=request["audit_dataset_id"],
        eval_dataset_id=request.get("eval_dataset_id"),
        spec=record.spec, created_at=record.created_at, updated_at=record.updated_at,
        started_at=record.started_at, finished_at=record.finished_at, links=links,
        handoffs={name: HandoffPublic.model_validate(h.model_dump()) for name, h in record.handoffs.items()},
        notifications=[NotificationPublic.model_validate(n.model_dump()) for n in record.notifications],
    )


def _new_record(tenant: str, job_id: str, body: JobCreate, spec: CorrectionSpec, digest: str,
                settings: ServiceSettings, idempotency_key: str | None) -> JobRecord:
    now = utcnow()
    return JobRecord(
        id=job_id, tenant=tenant, request=body.model_dump(mode="json", exclude_none=True),
        spec=spec.to_dict(), queue=body.queue or settings.default_queue, created_at=now, updated_at=now,
        request_hash=digest, enqueued_at=now,
        idempotency_key_sha256=key_digest(idempotency_key) if idempotency_key is not None else None,
        request_id=logs.context().get("request_id"),
    )


def _claim_key(records: Records, tenant: str, key: str, job_id: str, digest: str) -> str:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise _invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    entry = IdempotencyEntry(job_id=job_id, request_hash=digest, created_at=utcnow())
    bound = records.claim_idempotency_key(tenant, key, entry)
    if bound.request_hash != digest:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used for a different "
                       "request body; use a new key for a new job")
    return bound.job_id


def submit_job(records: Records, redis: Redis, settings: ServiceSettings, tenant: str, body: JobCreate,
               idempotency_key: str | None) -> tuple[JobRecord, bool]:
    """Validate and enqueue a job; returns the manifest and whether it was created now.

    An Idempotency-Key whose job was deleted is free again: the same POST makes a new job.

    Raises:
        ApiError: 422 invalid spec or ids, 409 reused idempotency key, 429 past the tenant's quota of
            jobs in flight, 503 queue unavailable.
    """
    spec = _validate(records, tenant, body, settings)
    digest = request_digest(body.model_dump(mode="json", exclude_unset=True))
    for _attempt in range(2):
        submitted = _submit_once(records, redis, settings, tenant, body, spec, digest, idempotency_key)
        if submitted is not None:
            return submitted
    raise ApiError(503, "queue_unavailable", "the job bound to this Idempotency-Key was being deleted "
                   "while this request ran; retry", headers={"Retry-After": "1"})


def _submit_once(records: Records, redis: Redis, settings: ServiceSettings, tenant: str, body: JobCreate,
                 spec: CorrectionSpec, digest: str,
                 idempotency_key: str | None) -> tuple[JobRecord, bool] | None:
    """One try of :func:`submit_job`; None when the key's job was deleted meanwhile (try again)."""
    job_id = new_id()
    if idempotency_key is not None:
        job_id = _claim_key(records, tenant, idempotency_key, job_id, digest)
        existing = records.get_job(tenant, job_id)
        if existing is not None:
            return existing, False
    check_job_quota(records, settings, tenant)
    record = _new_record(tenant, job_id, body, spec, digest, settings, idempotency_key)
    if not records.create_job(record):
        # A concurrent request with the same Idempotency-Key created this job between our claim
        # and now: it, not we, enqueues it (one manifest, one enqueue, one run).
        existing = records.get_job(tenant, job_id)
        if existing is None:
            raise ApiError(503, "queue_unavailable", "a concurrent request with this Idempotency-Key "
                           "could not submit the job; retry", headers={"Retry-After": "1"})
        return existing, False
    if idempotency_key is not None and _binding_gone(records, tenant, idempotency_key, job_id):
        # The job the key named was deleted (binding first, then manifest) between our claim and
        # our create: what we created would revive the deleted id. Undo it and claim anew.
        records.delete_job(tenant, job_id)
        return None
    try:
        enqueue_correction(redis, settings, tenant, job_id, record.queue)
    except RedisError as exc:
        log.warning("enqueue of job %s failed: %s", job_id, exc)
        records.delete_job(tenant, job_id)
        if idempotency_key is not None:
            records.release_idempotency_key(tenant, idempotency_key)
        raise ApiError(503, "queue_unavailable", "the job queue is unavailable; nothing was submitted, "
                       "retry later", headers={"Retry-After": "5"}) from exc
    return record, True


def _binding_gone(records: Records, tenant: str, idempotency_key: str, job_id: str) -> bool:
    bound = records.idempotency_binding(tenant, idempotency_key)
    return bound is None or bound.job_id != job_id


def get_job(records: Records, redis: Redis, settings: ServiceSettings, tenant: str, job_id: str) -> JobRecord:
    """The manifest of a job of ``tenant``, reconciled with RQ when it is not terminal.

    Raises:
        ApiError: 404 unknown id or another tenant's.
    """
    record = records.get_job(tenant, job_id)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id[:40]}")
    if not record.terminal:
        try:
            record = reconcile_job(records, redis, settings, record)
        except RedisError as exc:
            log.warning("could not reconcile job %s: %s", job_id, exc)
    return record


def list_jobs(records: Records, tenant: str, limit: int, offset: int, status: str | None) -> JobList:
    """One page of the tenant's jobs, newest first (from the tenant's index: only the page's
    manifests are read)."""
    page = records.job_page(tenant, limit, offset, status)
    next_offset = offset + limit if offset + limit < page.total else None
    return JobList(items=[job_public(j) for j in page.items], total=page.total, limit=limit, offset=offset,
                   next_offset=next_offset)


def cancel_job(
    records: Records, redis: Redis, settings: ServiceSettings, tenant: str, job_id: str
) -> JobRecord:
    """Cancel a queued job now, or ask a running one to stop (its work horse is stopped).

    Raises:
        ApiError: 404 unknown id, 409 the job already finished.
    """
    record = get_job(records, redis, settings, tenant, job_id)
    if record.terminal:
        raise ApiError(409, "job_finished", f"the job already ended with status {record.status}")

    def change(current: JobRecord) -> JobRecord | None:
        if current.terminal:
            return None
        current.cancel_requested = True
        if current.status == "queued":
            current.status, current.finished_at = "canceled", utcnow()
        return current

    before = record.status
    record = records.update_job(tenant, job_id, change)
    if record.status == "canceled" and before != "canceled":  # a queued job, canceled here and now
        job_events.ended(record, redis=redis, prefix=settings.queue_prefix)
    try:
        cancel_rq_job(redis, job_id)
    except RedisError as exc:
        log.warning("could not reach RQ to cancel job %s: %s", job_id, exc)
    notify_terminal(records, redis, settings, record)  # a queued job ended here; the reconciler delivers
    return record


def frontier_public(job_id: str, report_bytes: bytes) -> FrontierPublic:
    """The frontier part of a stored report (a report written before frontiers has none)."""
    report = json.loads(report_bytes)
    target = report.get("target", {})
    info = report.get("frontier_info") or {"skipped": "this report was written before frontiers existed"}
    return FrontierPublic(job_id=job_id, report_id=report.get("provenance", {}).get("report_id"),
                          decision_split=target.get("decision_split"),
                          target_metric=target.get("hard_metric"),
                          frontier=report.get("frontier", []), frontier_info=info)


def output_key(records: Records, redis: Redis, settings: ServiceSettings, tenant: str, job_id: str,
               output: str) -> str:
    """Key of one published output of a succeeded job.

    Raises:
        ApiError: 404 unknown id, 409 the job has not succeeded.
    """
    record = get_job(records, redis, settings, tenant, job_id)
    if record.status != "succeeded":
        raise ApiError(409, "job_not_succeeded", f"the job is {record.status}; outputs exist only once "
                       "it has succeeded", extra={"job_status": record.status})
    return records.output_key(tenant, job_id, OUTPUTS[output])
