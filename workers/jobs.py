"""The RQ job function: one correction, from ids to published outputs.

``run_correction_job(tenant, job_id)`` takes only ids, loads everything from the store, runs the
engine stage by stage writing progress into the manifest, honours cancellation between stages,
and publishes ``model.safetensors``, ``report.json`` and ``report.html`` in one atomic step
before marking the job ``succeeded``. It is safe to run twice: a terminal job is left alone and a
re-run replaces an earlier attempt's unpublished or published outputs with identical ones.

Engine errors (bad input, infeasible target, numerical trouble) fail the job with the engine's
code and message and are not retried; anything else propagates to RQ (``Retry``), and the
reconciler maps RQ's verdict onto the manifest.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models_store import open_store
from models_store.records import ArtifactRecord, JobError, JobRecord, Records, utcnow
from workers import job_events, lease
from workers.handoff.mlflow import hand_off_mlflow
from workers.notify.dispatch import notify_terminal
from workers.notify.events import notify_url
from workers.redact import redact_paths
from workers.settings import ServiceSettings, get_settings

if TYPE_CHECKING:
    from workers.engine.config import CorrectionSpec
    from workers.engine.pipeline import CorrectionInputs

__all__ = ["run_correction_job", "set_device", "set_threads"]

log = logging.getLogger(__name__)
PROGRESS_WRITE_INTERVAL_S = 0.5
"""Progress within a stage is written at most this often (a new stage is always written)."""
_device: str | None = None
_threads: int | None = None


def set_device(device: str) -> None:
    """Fix the device of jobs run by this process (the worker calls it once at start)."""
    global _device
    _device = device


def set_threads(threads: int) -> None:
    """Fix the threads of jobs run by this process and its work horses (0: the libraries'
    defaults); the worker calls it once at start, each horse applies it before its job."""
    global _threads
    _threads = threads


def _horse_threads() -> int | None:
    """Apply :func:`set_threads`'s count in this process; the intra-op threads torch now uses
    (None where no worker set a count: a job run in-process keeps its caller's threads)."""
    if _threads is None:
        return None
    from workers.threads import limit_threads

    return limit_threads(_threads)


class _Claim:
    """Moves a queued manifest to running, unless it is terminal, another execution holds its
    lease (``held``: see workers/lease.py) or cancellation was asked."""

    def __init__(self, lease_s: float = 0.0, threads: int | None = None) -> None:
        self.claimed, self.held, self._lease_s, self._threads = False, False, lease_s, threads

    def __call__(self, record: JobRecord) -> JobRecord | None:
        if record.terminal:
            return None
        if lease.held(record, self._lease_s):
            self.held = True
            return None
        if record.cancel_requested:
            record.status, record.finished_at = "canceled", utcnow()
            return record
        record.status, record.stage, record.progress, record.error = "running", "load", 0.0, None
        record.attempts += 1
        record.started_at = record.started_at or utcnow()
        record.worker_pid, record.device, record.threads = os.getpid(), _device, self._threads
        self.claimed = True
        return record


class _Progress:
    """The engine's progress callback: writes stage and overall fraction into the manifest."""

    def __init__(self, records: Records, record: JobRecord, delay_s: float) -> None:
        self._records, self._tenant, self._id = records, record.tenant, record.id
        self._delay, self._stage, self._written = delay_s, "load", 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        new_stage = stage != self._stage
        if new_stage and self._delay:
            time.sleep(self._delay)
        if not new_stage and time.monotonic() - self._written < PROGRESS_WRITE_INTERVAL_S:
            return
        self._stage, self._written = stage, time.monotonic()

        def change(record: JobRecord) -> JobRecord | None:
            if record.status != "running":
                return None
            record.stage, record.progress = stage, max(record.progress, min(max(fraction, 0.0), 1.0))
            return record

        self._records.update_job(self._tenant, self._id, change)

    def should_cancel(self) -> bool:
        """Whether a client asked to cancel (read from the manifest between stages)."""
        record = self._records.get_job(self._tenant, self._id)
        return record is None or record.cancel_requested


def _artifact(records: Records, tenant: str, kind: str, artifact_id: str | None) -> ArtifactRecord | None:
    if artifact_id is None:
        return None
    found = records.get_artifact(tenant, kind, artifact_id)  # type: ignore[arg-type]
    if found is None:
        from workers.engine.errors import InputError

        raise InputError(f"{kind[:-1]} {artifact_id} no longer exists in the store")
    return found


def _load(records: Records, record: JobRecord, stack: ExitStack, spec: CorrectionSpec,
          device: str) -> CorrectionInputs:
    from workers.engine.errors import InputError
    from workers.engine.io.architecture import parse_arch
    from workers.engine.io.datasets import parse_schema
    from workers.engine.io.memory_plan import default_memory_budget
    from workers.engine.pipeline import load_inputs, train_embedding

    request = record.request
    model = _artifact(records, record.tenant, "models", request["model_id"])
    if model is None or model.architecture is None:
        raise InputError("the job names no model with an architecture")

    def dataset(field: str) -> Any:
        found = _artifact(records, record.tenant, "datasets", request.get(field))
        if found is None:
            return None
        path = stack.enter_context(records.store.local_path(records.data_key(found)))
        return path, parse_schema(found.dataset_schema)

    model_path = stack.enter_context(records.store.local_path(records.data_key(model)))
    return load_inputs(model_path, parse_arch(model.architecture), dataset("train_dataset_id"),
                       dataset("audit_dataset_id"), dataset("eval_dataset_id"),
                       spec.objective.sensitive_attribute, default_memory_budget(),
                       train_embedding(spec, device))


def _pick_device(settings: ServiceSettings) -> str:
    if _device is not None:
        return _device
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _execute(records: Records, record: JobRecord, settings: ServiceSettings) -> dict[str, float]:
    """Run the engine and publish the outputs; returns the stage timings."""
    from workers.engine.config import spec_from_dict
    from workers.engine.pipeline import run_correction
    from workers.reporting.outputs import write_outputs

    progress = _Progress(records, record, settings.debug_stage_delay_s)
    with ExitStack() as stack:
        spec, device = spec_from_dict(record.spec), _pick_device(settings)
        inputs = _load(records, record, stack, spec, device)
        result = run_correction(inputs, spec, progress=progress, should_cancel=progress.should_cancel,
                                device=device, job_id=record.id)
    if progress.should_cancel():
        from workers.engine.errors import CorrectionCanceled

        raise CorrectionCanceled("canceled before publishing")
    with tempfile.TemporaryDirectory(prefix="softunlearn-out-") as out:
        write_outputs(result, Path(out))
        records.store.publish_dir(records.output_prefix(record.tenant, record.id), Path(out))
    timings = result.report.get("timings", {})
    return {str(k): float(v) for k, v in timings.items() if isinstance(v, (int, float))}


def _finish(records: Records, record: JobRecord, status: str, error: JobError | None,
            timings: dict[str, float] | None = None) -> None:
    finished = utcnow()

    def change(current: JobRecord) -> JobRecord | None:
        if current.terminal:
            return None
        current.status, current.error, current.finished_at = status, error, finished  # type: ignore[assignment]
        if status == "succeeded":
            current.stage, current.progress = "done", 1.0
        current.timings = timings or current.timings
        return current

    ended = records.update_job(record.tenant, record.id, change)
    if ended.finished_at == finished:  # this call ended it (not an earlier writer)
        job_events.ended(ended, timings)
    if status != "succeeded":
        records.store.delete_prefix(records.output_prefix(record.tenant, record.id))
    _notify(records, ended)


def _notify(records: Records, record: JobRecord) -> None:
    """The webhook of a terminal job: queued in Redis and attempted once here (bounded by
    ``webhook_timeout_s``); the API's reconciler makes any retries."""
    if not record.terminal or notify_url(record) is None:
        return
    from workers.queue import connect

    settings = get_settings()
    notify_terminal(records, connect(settings), settings, record, deliver_now=True)


@job_events.in_job_context
def run_correction_job(tenant: str, job_id: str) -> dict[str, str]:
    """Run correction job ``job_id`` of ``tenant`` (the RQ entry point; arguments are ids only).

    Returns:
        ``{"job_id": ..., "status": ...}`` (the manifest in the store is the record of truth).
    """
    from workers.engine.errors import CorrectionCanceled, EngineError

    settings = get_settings()
    threads = _horse_threads()  # before any engine work of this horse
    records = Records(open_store(settings.store, endpoint_url=settings.s3_endpoint_url))
    record, claimed = lease.claim(records, tenant, job_id, lambda: _Claim(settings.job_lease_s, threads))
    if not claimed:
        _notify(records, record)  # canceled at claim, or already finished: idempotent
        return {"job_id": job_id, "status": record.status}
    job_events.started(record, _device or settings.device)
    try:
        with lease.LeaseKeeper(records, tenant, job_id, os.getpid(), settings.job_lease_s):
            timings = _execute(records, record, settings)
            hand_off_mlflow(records, record, settings)  # never raises: a failure is a recorded warning
    except CorrectionCanceled:
        _finish(records, record, "canceled", None)
        return {"job_id": job_id, "status": "canceled"}
    except EngineError as exc:
        _finish(records, record, "failed", JobError(code=exc.code, message=redact_paths(str(exc))))
        return {"job_id": job_id, "status": "failed"}
    _finish(records, record, "succeeded", None, timings)
    return {"job_id": job_id, "status": "succeeded"}
